"""The distillation pipeline: collect -> tokenizer -> student -> train -> DAgger rounds -> evaluate ->
model folder. Configured by a YAML file (``configs/train-*.yaml``), driven by ``tickcall train``.

Resumable: every stage writes into ``work_dir`` (data per round as JSONL, the tokenizer, a training
checkpoint per round) and a restarted run reuses what is there. Reproducible: ``seed`` fixes episode
seeds, noise, model init and data order (bit-exact on the same machine and thread count).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tickcall.models.format import check_max_heads, get_template, max_heads_meta, max_heads_of
from tickcall.models.training.collect import HISTORY_STYLES, RANDOM, TEACHER, Record, rollout
from tickcall.models.training.dataset import Dataset, merge, read_dataset
from tickcall.models.training.rows import RowCodec, branch_texts
from tickcall.models.training.sources import EnvSource, SourceFactory
from tickcall.models.training.split import DEFAULT_GAP, DEFAULT_SHARE, Split, check_share, split_rows
from tickcall.models.training.trainer import TrainSettings, train


@dataclass
class ModelSpec:
    """The student. ``kind``: ``scratch`` (Qwen2 of this size, our tokenizer) or ``smollm2`` (a peft
    LoRA adapter of ``lora_rank``/``lora_alpha`` on ``lora_targets`` over SmolLM2-135M, trained by
    ``models.training.smollm2``).

    ``max_heads``: argument heads the student is trained and served with (1..64; 6, the public
    checkpoints' count, by default). Its tokenizer holds ``format.special_tokens(max_heads)``, every
    row trains ``arg1``..``argN`` (heads mode ``all``), and ``tickcall.json`` records the number
    (``format.max_heads_meta``), so the engines accept tools with up to that many parameters."""

    kind: str = "scratch"
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 384
    vocab_size: int = 512
    lora_rank: int = 16
    lora_alpha: int = 32
    # smollm2: the projections LoRA adapts (peft target_modules names)
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    max_heads: int = 6

    def __post_init__(self) -> None:
        try:
            check_max_heads(self.max_heads)
        except ValueError as exc:
            raise ValueError(f"model.{exc}") from None


@dataclass
class DataSpec:
    """Teacher rollouts: ``episodes`` per env, random-action rate ``epsilon``, state nudges; plus
    ``coverage`` rows per env from states sampled directly (see ``models.training.coverage``).

    ``history_len``: history items per turn (0: none), written to the model's ``tickcall.json`` so
    the run uses the same number; ``history_style``: ``futures`` (AsyncFC status lines as a real-time
    run shows them) or ``lockstep`` (every call ``done``); both rendered by ``models.prompt_text``."""

    episodes: int = 100
    epsilon: float = 0.2
    perturb_prob: float = 0.05
    perturb_scale: float = 1.0
    history_len: int = 4
    history_style: str = "futures"
    max_decisions: int = 400
    n_envs: int = 32
    heldout_episodes: int = 8
    delay_prob: float = 0.2
    # extra rows per env from states sampled over the state space (models.training.coverage)
    coverage: int = 0
    heldout_coverage: int = 0  # held-out sampled states per env (scored apart from the rollout states)
    # envs labelled only by a dataset (no teacher to label fresh states): the share of its rows held out,
    # whole episodes or contiguous blocks (models.training.split), and the training rows dropped beside
    # a held-out block so no training turn is a held-out turn's neighbour
    heldout_share: float = DEFAULT_SHARE
    heldout_gap: int = DEFAULT_GAP
    text_labels: bool = False  # the teacher decides on the values the text shows (CartPole: rounded)
    soft_tau: float = 0.0  # > 0: distil the teacher's scores, softmax(logit / soft_tau), where it has them

    def __post_init__(self) -> None:
        if self.history_style not in HISTORY_STYLES:
            raise ValueError(
                f"data.history_style must be one of {', '.join(HISTORY_STYLES)}, not {self.history_style!r}"
            )
        if self.history_len < 0:
            raise ValueError(f"data.history_len must be >= 0, not {self.history_len}")
        try:
            check_share(self.heldout_share)
        except ValueError as exc:
            raise ValueError(f"data.heldout_share: {exc}") from None
        if self.heldout_gap < 0:
            raise ValueError(f"data.heldout_gap must be >= 0 rows, not {self.heldout_gap}")


@dataclass
class DaggerSpec:
    """Rounds of: roll the student (``episodes`` per env), relabel with the teacher, train ``steps``."""

    rounds: int = 0
    episodes: int = 32
    steps: int = 300
    lr_scale: float = 0.5
    epsilon: float = 0.05


@dataclass
class TeacherSpec:
    """Who labels the states: ``kind`` for ``tickcall.envs.teachers.load_teacher`` (``expert``,
    ``module:function``, ``sb3:FILE.zip``, ``ppo``/``a2c``/``dqn``/``sac``/``td3`` trained here) or
    ``none`` (the labels come only from ``data_files``: no DAgger, held-out rows split from the data).
    ``steps``/``n_envs``/``kwargs``: the budget of an SB3 agent trained here (env decisions)."""

    kind: str = "expert"
    steps: int = 50_000
    n_envs: int = 8
    eval_episodes: int = 10
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.kind:
            raise ValueError("teacher.kind must not be empty (none: labels only from data_files)")
        if self.steps < 1:
            raise ValueError(f"teacher.steps must be >= 1, not {self.steps}")

    @property
    def labels(self) -> bool:
        return self.kind != "none"


@dataclass
class TrainConfig:
    name: str = "tickcall-student"
    envs: list[str] = field(default_factory=lambda: ["CartPole-v1"])
    out: str = "runs/student/model"
    work_dir: str = "runs/student/work"
    seed: int = 0
    template: str = "compact"
    system: str | None = None
    heads_mode: str = "all"
    prefer_builtin: bool = False
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSettings = field(default_factory=TrainSettings)
    dagger: DaggerSpec = field(default_factory=DaggerSpec)
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    # datasets (models.training.dataset; tickcall record, ticks.jsonl) whose rows are round 0's data
    # for the envs they hold, in place of teacher rollouts
    data_files: list[str] = field(default_factory=list)
    eval_episodes: int = 20
    eval_every: int = 0  # log held-out head accuracy every this many training steps (0: only at the end)
    eval_states: int = 600  # held-out states per env (rollout and sampled each) for those checks
    realtime_eval: bool = False
    realtime_hz: float = 16.0
    source_path: str | None = None  # the YAML file this came from (for the model card's command)
    init_from: str | None = None  # start from this model folder (weights + tokenizer), e.g. a shipped one

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        subs = {
            "model": ModelSpec,
            "data": DataSpec,
            "train": TrainSettings,
            "dagger": DaggerSpec,
            "teacher": TeacherSpec,
        }
        for key, typ in subs.items():
            if key in d:
                val = dict(d[key] or {})
                bad = set(val) - set(typ.__dataclass_fields__)
                if bad:
                    raise ValueError(f"unknown keys in {key}: {', '.join(sorted(bad))}")
                d[key] = typ(**val)
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        import yaml

        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _write_jsonl(path: Path, records: list[Record]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for r in records:
            f.write(json.dumps(r.to_dict()) + "\n")
    tmp.replace(path)


def _read_jsonl(path: Path) -> list[Record]:
    return [Record.from_dict(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def _episode_seeds(cfg: TrainConfig, env_index: int, stage: int, n: int) -> list[int]:
    base = cfg.seed * 1_000_003 + env_index * 100_003 + stage * 10_007 + 1_000
    return [base + i for i in range(n)]


EVAL_SEED_BASE = 10_000  # closed-loop evaluation episodes use seeds 10000..10000+n-1 (never trained on)


#: ``compare(env_id, folder, episodes, hz, seed, history, threads, log=) -> figures``: the real-time
#: loop figures of a model folder against the teacher (``tickcall.envs.realtime_eval.compare``).
RealtimeCompare = Callable[..., dict[str, Any]]


class Pipeline:
    """One distillation run (see module docstring). ``log`` receives one-line progress messages.

    ``sources``: how to get each env's ``EnvSource`` (``tickcall.envs.teaching.get_source``; this room
    does not import the envs: ``tickcall.training.make_pipeline`` wires both). ``realtime``: the
    real-time comparison used when ``cfg.realtime_eval`` is set."""

    def __init__(
        self,
        cfg: TrainConfig,
        log=print,
        progress: bool = True,
        *,
        sources: SourceFactory,
        realtime: RealtimeCompare | None = None,
        dataset: Dataset | None = None,
    ) -> None:
        self.cfg = cfg
        self.log = log
        self.progress = progress
        self.realtime_compare = realtime
        self.work = Path(cfg.work_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}
        if dataset is None and cfg.data_files:
            dataset = load_datasets(cfg.data_files)
        self.dataset = dataset
        given = set(dataset.env_ids) if dataset is not None else set()
        t0 = time.perf_counter()
        # sources: envs to roll out and score on; an env only a dataset knows (an engine, a model's log
        # of an env that cannot be made here) has none and is scored on held-out rows alone
        self.sources: dict[str, EnvSource] = {}
        for e in cfg.envs:
            try:
                self.sources[e] = sources(e, cfg.prefer_builtin, cfg.data.text_labels)
            except Exception as exc:
                if e not in given or cfg.teacher.labels:
                    raise
                self.log(
                    f"{e}: no env to roll out here ({type(exc).__name__}: {exc}); scored on held-out rows"
                )
        self.timings["teacher_s"] = time.perf_counter() - t0
        self.tools: dict[str, list] = {}
        for e in cfg.envs:
            if e in given:
                self.tools[e] = dataset.tools(e)
                if e in self.sources and self.sources[e].tools != self.tools[e]:
                    raise ValueError(
                        f"{e}: the dataset's tools differ from the env's ({[t.name for t in self.tools[e]]} "
                        f"vs {[t.name for t in self.sources[e].tools]}); the student would be trained "
                        "on another prompt than it runs with"
                    )
            elif e in self.sources and self.sources[e].has_teacher:
                self.tools[e] = self.sources[e].tools
            else:
                raise ValueError(f"{e}: no labels: neither a teacher nor a dataset holding it")
        self.template = get_template(cfg.template)
        self._splits: dict[str, Split] = {}

    def _labelled(self) -> dict[str, EnvSource]:
        """The sources whose teacher can label any state (rollouts, DAgger, coverage)."""
        return {e: s for e, s in self.sources.items() if s.has_teacher}

    def _given(self, env_id: str) -> bool:
        return self.dataset is not None and env_id in self.dataset.header.envs

    def split(self, env_id: str) -> Split:
        """A dataset's rows of ``env_id`` as training and held-out rows. With a teacher that labels fresh
        states every row trains (the held-out states are the teacher's own rollouts); without one,
        ``data.heldout_share`` of the rows is held out by whole episodes or contiguous blocks, seeded
        by ``seed`` (``models.training.split``)."""
        if env_id not in self._splits:
            rows = self.dataset.by_env()[env_id]
            d = self.cfg.data
            if env_id in self._labelled():
                self._splits[env_id] = Split(rows, [], "none", d.heldout_share, self.cfg.seed)
            else:
                sp = split_rows(rows, d.heldout_share, self.cfg.seed, d.heldout_gap)
                self._check_split(env_id, sp)
                self._splits[env_id] = sp
                if sp.unit == "none":
                    self.log(f"split {env_id}: only {len(rows)} rows: nothing held out, no agreement figure")
                else:
                    self.log(
                        f"split {env_id}: {len(sp.heldout)} of {len(rows)} rows held out by {sp.unit} "
                        f"({len(sp.heldout_groups)} of {sp.groups}; {sp.dropped} training rows dropped "
                        "beside them)"
                    )
        return self._splits[env_id]

    def _check_split(self, env_id: str, sp: Split) -> None:
        """Keep ``work_dir/split-ENV.json``; a resumed run whose split differs (another share, seed or
        data) would score a checkpoint on rows it trained on: refused in one line."""
        path = self.work / f"split-{_slug(env_id)}.json"
        info = sp.info()
        if path.exists():
            old = json.loads(path.read_text())
            if old != info:
                raise ValueError(
                    f"{env_id}: {self.work} holds a run trained with another held-out split ({old['unit']} "
                    f"{old['heldout_groups']} of {old['groups']}, share {old['share']}, seed {old['seed']}); "
                    "use a fresh --work-dir, or the same data, share and seed"
                )
            return
        path.write_text(json.dumps(info) + "\n")

    # ---- stages ------------------------------------------------------------------------------
    def collect_teacher(self) -> dict[str, list[Record]]:
        cfg, d = self.cfg, self.cfg.data
        out: dict[str, list[Record]] = {}
        for i, env_id in enumerate(cfg.envs):
            if self._given(env_id):
                out[env_id] = self.split(env_id).train
                self.log(
                    f"data {env_id}: {len(out[env_id])} rows from {self.dataset.header.teacher or 'a dataset'}"
                )
                continue
            src = self.sources[env_id]
            path = self.work / f"data-{_slug(env_id)}-r0.jsonl"
            if path.exists():
                out[env_id] = _read_jsonl(path)
                continue
            recs, stats = self._teacher_rollout(src, _episode_seeds(cfg, i, 0, d.episodes), cfg.seed + i)
            _write_jsonl(path, recs)
            self.log(
                f"collect {env_id}: {len(recs)} states from {d.episodes} noisy teacher episodes "
                f"(mean return {stats.mean_return:.1f})"
            )
            out[env_id] = recs
        for i, (env_id, src) in enumerate(self.sources.items()):
            if d.coverage > 0 and src.has_teacher:
                out[env_id] = out[env_id] + self._coverage(src, "cov", d.coverage, cfg.seed * 7_727 + 17 + i)
        return out

    def _teacher_rollout(self, src: EnvSource, seeds: list[int], rng_seed: int) -> tuple[list[Record], Any]:
        """The teacher's noisy episodes of ``src`` with these seeds, as ``data`` sets the noise."""
        d = self.cfg.data
        return rollout(
            src,
            TEACHER,
            seeds,
            n_envs=d.n_envs,
            epsilon=d.epsilon,
            perturb_prob=d.perturb_prob,
            perturb_scale=d.perturb_scale,
            history_len=d.history_len,
            history_style=d.history_style,
            max_decisions=d.max_decisions,
            rng_seed=rng_seed,
            delay_prob=d.delay_prob,
        )

    def _coverage(self, src: EnvSource, tag: str, n: int, rng_seed: int) -> list[Record]:
        """``n`` sampled-state rows of ``src`` (cached in ``work_dir/{tag}-ENV.jsonl``)."""
        from tickcall.models.training.coverage import coverage_records

        path = self.work / f"{tag}-{_slug(src.env_id)}.jsonl"
        if path.exists():
            return _read_jsonl(path)
        recs = coverage_records(src, n, rng_seed)
        _write_jsonl(path, recs)
        self.log(f"coverage {src.env_id}: {len(recs)} sampled states ({tag})")
        return recs

    def heldout_coverage(self) -> dict[str, list[Record]]:
        """Held-out sampled states per env (empty when ``data.heldout_coverage`` is 0 or no sampler)."""
        from tickcall.models.training.coverage import has_sampler

        n = self.cfg.data.heldout_coverage
        return {
            e: self._coverage(s, "heldout-cov", n, self.cfg.seed * 7_727 + 90_001 + i)
            for i, (e, s) in enumerate(self.sources.items())
            if n > 0 and has_sampler(e) and s.has_teacher
        }

    def heldout(self) -> dict[str, list[Record]]:
        cfg, d = self.cfg, self.cfg.data
        out = {}
        for i, env_id in enumerate(cfg.envs):
            src = self._labelled().get(env_id)
            if src is None:
                out[env_id] = self.split(env_id).heldout if self._given(env_id) else []
                continue
            path = self.work / f"heldout-{_slug(env_id)}.jsonl"
            if path.exists():
                out[env_id] = _read_jsonl(path)
                continue
            recs, _ = self._teacher_rollout(
                src, _episode_seeds(cfg, i, 99, d.heldout_episodes), cfg.seed + 7_919 + i
            )
            _write_jsonl(path, recs)
            out[env_id] = recs
        return out

    def build_student(self, data: dict[str, list[Record]]):
        """Tokenizer + model (scratch) in ``work_dir/init`` (reused when present)."""
        from tickcall.models.tiny import make_tiny_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        m = self.cfg.model
        init = self.work / "init"
        if not (init / "tickcall.json").exists() and self.cfg.init_from:
            src = Path(self.cfg.init_from)
            if not (src / "config.json").exists():
                raise FileNotFoundError(f"init_from: {src} is not a model folder")
            init.mkdir(parents=True, exist_ok=True)
            for f in src.iterdir():
                if f.is_file():
                    (init / f.name).write_bytes(f.read_bytes())
        if not (init / "tickcall.json").exists():
            if not data:
                raise FileNotFoundError(f"{init} is missing: run the pipeline first")
            if m.kind != "scratch":
                raise ValueError(f"model kind {m.kind!r} is trained by models.training.smollm2")
            rng = random.Random(self.cfg.seed)
            corpus: list[str] = []
            for env_id, recs in data.items():
                tools = self.tools[env_id]
                for r in rng.sample(recs, min(2000, len(recs))):
                    corpus.extend(
                        i + t
                        for i, t, _ in branch_texts(
                            r, tools, self.template, self.cfg.system, "all", m.max_heads
                        )[:2]
                    )
            make_tiny_model(
                init,
                hidden=m.hidden,
                layers=m.layers,
                heads=m.heads,
                kv_heads=m.kv_heads,
                intermediate=m.intermediate,
                vocab_size=m.vocab_size,
                seed=self.cfg.seed,
                corpus=corpus,
                template=self.cfg.template,
                max_heads=m.max_heads,
            )
        # an init_from folder (or a work_dir of an earlier config) brings its own tokenizer: its heads
        # must be the config's, or rows would name tags its vocabulary does not hold
        have = max_heads_of(json.loads((init / "tickcall.json").read_text()))
        if have != m.max_heads:
            raise ValueError(
                f"{init} has {have} argument heads but the config asks for model.max_heads "
                f"{m.max_heads}: start from a model with as many heads (or a fresh work_dir)"
            )
        tok = AutoTokenizer.from_pretrained(init)
        model = AutoModelForCausalLM.from_pretrained(init)
        return model, tok

    def encode(self, codec: RowCodec, data: dict[str, list[Record]]):
        examples = []
        for env_id, recs in data.items():
            tools = self.tools[env_id]
            examples.extend(codec.encode(r, tools) for r in recs)
        return examples

    def export(self, checkpoint: str | Path, episodes: int | None = None) -> dict[str, Any]:
        """Score a training checkpoint of this run (held-out heads, lock-step returns) and write the
        model folder from it: a model can be shipped while later rounds still train."""
        import torch

        model, tok = self.build_student({})
        state = torch.load(checkpoint, weights_only=True)  # tensors and plain types only (trainer._save)
        model.load_state_dict(state["model"])
        model.eval()
        scores = self.score(model, tok, episodes)
        scores["checkpoint"] = {"file": Path(checkpoint).name, "step": int(state["step"])}
        self.served(self.save(model, tok, scores), scores)
        return scores

    def score(self, model, tok, episodes: int | None = None) -> dict[str, Any]:
        """Held-out head accuracy and lock-step returns (student, teacher, random) per env."""
        from tickcall.models.training.evaluate import closed_loop, head_accuracy, make_student_policy
        from tickcall.models.training.student import BatchStudent

        cfg = self.cfg
        held, held_cov = self.heldout(), self.heldout_coverage()
        scores: dict[str, Any] = {
            "params": sum(p.numel() for p in model.parameters()),
            "vocab": len(tok),
            "envs": {},
        }
        for env_id in cfg.envs:
            student = BatchStudent(
                model, tok, self.tools[env_id], self.template, cfg.system, max_heads=cfg.model.max_heads
            )
            acc = head_accuracy(student, held[env_id])
            acc_cov = head_accuracy(student, held_cov[env_id]) if held_cov.get(env_id) else None
            src = self.sources.get(env_id)
            if env_id not in self._labelled() and self._given(env_id):
                # no teacher labels fresh states: the held-out turns are the data's own, and the figure is
                # the student's agreement with whoever made the data (a logged model, an engine's AI)
                acc["split"] = self.split(env_id).info()
            scores["envs"][env_id] = {
                "heldout": acc,
                "source": src.origin if src else "dataset",
                "teacher": self._teacher_of(env_id),
            }
            self.log(
                f"{env_id}: head accuracy {acc['per_head']}, exact {acc['exact_call']:.4f}, legal "
                f"{acc['legal_rate']:.4f} ({acc['n']} held-out states)"
            )
            if src is None:
                self.log(
                    f"{env_id}: no lock-step or real-time loop (the env cannot be made on this machine); "
                    "scored on held-out turns only"
                )
                continue
            seeds = [EVAL_SEED_BASE + k for k in range(episodes or cfg.eval_episodes)]
            args = (cfg.data.history_len, cfg.data.history_style)
            st = closed_loop(src, make_student_policy(student, {}), seeds, *args)
            te = closed_loop(src, TEACHER, seeds, *args) if src.has_teacher else None
            rnd = closed_loop(src, RANDOM, seeds, *args)
            scores["envs"][env_id]["lockstep"] = {
                "student": st,
                "teacher": te,
                "random": rnd,
                "hold": src.hold,
            }
            if acc_cov is not None:
                scores["envs"][env_id]["heldout_coverage"] = acc_cov
                self.log(
                    f"{env_id}: sampled held-out states ({acc_cov['n']}): head accuracy {acc_cov['per_head']}, "
                    f"exact {acc_cov['exact_call']:.4f}, legal {acc_cov['legal_rate']:.4f}"
                )
            self.log(
                f"{env_id}: lock-step return student {st['mean_return']:.1f} (illegal "
                f"{st['illegal']}/{st['decisions']}) teacher {te['mean_return'] if te else float('nan'):.1f} "
                f"random {rnd['mean_return']:.1f}"
            )
        return scores

    def served(self, folder: Path, scores: dict[str, Any]) -> None:
        """For envs scored on the data's own held-out turns: the agreement of the written model folder
        as ``tickcall run`` serves it (``evaluate.served_agreement``: the engine, constrained heads),
        added as ``heldout.served``; scores.json and the card are rewritten."""
        from tickcall.models.training.card import write_card
        from tickcall.models.training.evaluate import served_agreement

        held = self.heldout()
        done = False
        for env_id in self.cfg.envs:
            acc = scores["envs"].get(env_id, {}).get("heldout", {})
            if not acc.get("split") or not held.get(env_id):
                continue
            acc["served"] = sv = served_agreement(
                folder, self.tools[env_id], held[env_id], self.cfg.train.threads
            )
            self.log(
                f"{env_id}: as served (engine, constrained heads): exact {sv['exact_call']:.4f}, legal "
                f"{sv['legal_rate']:.4f}, function {sv['function']:.4f} ({sv['n']} held-out turns)"
            )
            done = True
        if done:
            (folder / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
            write_card(folder, self.cfg, scores)

    def _teacher_of(self, env_id: str) -> dict[str, Any]:
        """Who labelled ``env_id``'s rows: the dataset's teacher and/or the source's (with its info)."""
        out: dict[str, Any] = {}
        if self._given(env_id):
            out["dataset"] = self.dataset.header.teacher
        src = self.sources.get(env_id)
        if src is not None and src.has_teacher:
            out["kind"] = self.cfg.teacher.kind
            out["spec"] = src.teacher_spec
            out.update(src.teacher_info)
        return out

    def run(self) -> dict[str, Any]:
        """Every stage; returns the scores (also written to the model card and scores.json)."""
        import torch

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        torch.set_num_threads(cfg.train.threads)
        t0 = time.perf_counter()
        data = self.collect_teacher()
        self.heldout()
        self.timings["collect_s"] = time.perf_counter() - t0
        model, tok = self.build_student(data)
        codec = RowCodec(
            tok,
            self.template,
            cfg.system,
            cfg.heads_mode,
            soft_tau=cfg.data.soft_tau,
            max_heads=cfg.model.max_heads,
        )
        prefixes = {e: codec.prefix_ids(t) for e, t in self.tools.items()}
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        n_params = sum(p.numel() for p in model.parameters())
        self.log(
            f"student: {n_params / 1e6:.2f}M parameters, vocab {len(tok)}; "
            f"prefix tokens {', '.join(f'{e}={len(p)}' for e, p in prefixes.items())}"
        )
        t1 = time.perf_counter()
        history: list[dict[str, Any]] = []
        rounds = 1 + cfg.dagger.rounds
        for r in range(rounds):
            if r > 0:
                data = self._dagger_round(r, model, tok, data)
            settings = TrainSettings(**asdict(cfg.train))
            if r > 0:
                settings.steps = cfg.dagger.steps
                settings.lr = cfg.train.lr * cfg.dagger.lr_scale
                settings.warmup = min(settings.warmup, 20)
            settings.seed = cfg.seed + r
            done_flag = self.work / f"trained-r{r}.json"
            ckpt = self.work / f"ckpt-r{r}.pt"
            if done_flag.exists():
                state = torch.load(ckpt, weights_only=True)
                model.load_state_dict(state["model"])
                history.append(json.loads(done_flag.read_text()))
                continue
            examples = self.encode(codec, data)
            on_step = self._checker(model, tok, r) if cfg.eval_every > 0 else None
            res = train(
                model,
                examples,
                prefixes,
                pad,
                settings,
                checkpoint=ckpt,
                desc=f"train r{r} ({len(examples)} rows)",
                progress=self.progress,
                log=self.log,
                on_step=on_step,
            )
            res["rows"] = len(examples)
            done_flag.write_text(json.dumps(res))
            history.append(res)
            self.log(
                f"round {r}: {res['steps']} steps on {len(examples)} examples, "
                f"loss {res['loss']:.4f}, teacher-forced branch accuracy {res['branch_acc']:.3f}"
            )
        self.timings["train_s"] = time.perf_counter() - t1
        model.eval()
        scores = self.score(model, tok)
        scores.update(rounds=history, rows={e: len(v) for e, v in data.items()})
        scores["timings_s"] = dict(self.timings)
        scores["machine"] = machine()
        out = self.save(model, tok, scores)
        self.served(out, scores)
        if cfg.realtime_eval:
            self.realtime(out, scores)
        return scores

    def _checker(self, model, tok, r: int):
        """An ``on_step`` hook: every ``eval_every`` steps, held-out head accuracy on ``eval_states``
        rollout and sampled states per env, logged and kept in ``work_dir/curve-r{r}.jsonl``."""
        from tickcall.models.training.evaluate import head_accuracy
        from tickcall.models.training.student import BatchStudent

        cfg = self.cfg
        held = {e: v[: cfg.eval_states] for e, v in self.heldout().items()}
        cov = {e: v[: cfg.eval_states] for e, v in self.heldout_coverage().items()}
        path = self.work / f"curve-r{r}.jsonl"

        def check(step: int, loss: float) -> None:
            if step % cfg.eval_every:
                return
            model.eval()
            row: dict[str, Any] = {"round": r, "step": step, "loss": loss}
            for env_id in cfg.envs:
                student = BatchStudent(
                    model, tok, self.tools[env_id], self.template, cfg.system, max_heads=cfg.model.max_heads
                )
                for name, recs in (("rollout", held[env_id]), ("sampled", cov.get(env_id))):
                    if recs:
                        acc = head_accuracy(student, recs)
                        row[f"{env_id}/{name}"] = acc
                        self.log(
                            f"r{r} step {step} {env_id} {name} ({acc['n']}): exact {acc['exact_call']:.4f} "
                            f"legal {acc['legal_rate']:.4f} heads "
                            + " ".join(f"{h} {v:.3f}" for h, v in acc["per_head"].items())
                        )
            with path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            model.train()

        return check

    def realtime(self, folder: Path, scores: dict[str, Any]) -> dict[str, Any]:
        """Real-time loop figures for every env of the config; updates scores.json and the card."""
        from tickcall.models.training.card import write_card

        if self.realtime_compare is None:
            raise ValueError(
                "realtime_eval needs the Pipeline's realtime comparison (tickcall.training."
                "make_pipeline passes it)"
            )
        for env_id in self.cfg.envs:
            if env_id not in self.sources:
                why = "the env cannot be made on this machine (only its data is here)"
                scores["envs"].setdefault(env_id, {})["realtime_skipped"] = why
                self.log(f"realtime {env_id}: skipped: {why}; its figure is the held-out agreement")
                continue
            src = self.sources[env_id]
            scores["envs"].setdefault(env_id, {})["realtime"] = self.realtime_compare(
                env_id,
                folder,
                self.cfg.eval_episodes,
                self.cfg.realtime_hz,
                EVAL_SEED_BASE,
                self.cfg.data.history_len,
                self.cfg.train.threads,
                log=self.log,
                teacher=src.teacher_spec,
            )
        (folder / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
        write_card(folder, self.cfg, scores)
        return scores

    def _dagger_round(self, r: int, model, tok, data: dict[str, list[Record]]) -> dict[str, list[Record]]:
        from tickcall.models.training.evaluate import make_student_policy
        from tickcall.models.training.student import BatchStudent

        cfg, dg = self.cfg, self.cfg.dagger
        out = dict(data)  # envs without a teacher keep their rows
        for i, (env_id, src) in enumerate(self.sources.items()):
            if not src.has_teacher:
                continue
            path = self.work / f"data-{_slug(env_id)}-r{r}.jsonl"
            if path.exists():
                new = _read_jsonl(path)
            else:
                student = BatchStudent(
                    model, tok, src.tools, self.template, cfg.system, max_heads=cfg.model.max_heads
                )
                tally: dict[str, int] = {}
                new, stats = rollout(
                    src,
                    make_student_policy(student, tally),
                    _episode_seeds(cfg, i, r, dg.episodes),
                    n_envs=cfg.data.n_envs,
                    epsilon=dg.epsilon,
                    perturb_prob=cfg.data.perturb_prob,
                    perturb_scale=cfg.data.perturb_scale,
                    history_len=cfg.data.history_len,
                    history_style=cfg.data.history_style,
                    max_decisions=cfg.data.max_decisions,
                    rng_seed=cfg.seed + 31 * r + i,
                    delay_prob=cfg.data.delay_prob,
                )
                _write_jsonl(path, new)
                self.log(
                    f"dagger r{r} {env_id}: student mean return {stats.mean_return:.1f}, "
                    f"{len(new)} states relabelled, {stats.illegal} illegal calls"
                )
            out[env_id] = data[env_id] + new
        return out

    def save(self, model, tok, scores: dict[str, Any]) -> Path:
        from tickcall.models.training.card import write_card

        out = Path(self.cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tok.save_pretrained(out)
        meta = {
            "template": self.cfg.template,
            "system": self.cfg.system,
            "envs": list(self.cfg.envs),
            "name": self.cfg.name,
            "history_len": self.cfg.data.history_len,
            **max_heads_meta(self.cfg.model.max_heads),
        }
        (out / "tickcall.json").write_text(json.dumps(meta, indent=2) + "\n")
        (out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
        write_card(out, self.cfg, scores)
        return out


def machine() -> dict[str, Any]:
    """The CPU the run trained on (``/proc/cpuinfo`` model name where there is one) and its core count:
    the card's wall times mean little without them."""
    import os

    from tickcall.models.cpu_features import cpu_name

    return {"cpu": cpu_name(), "cores": os.cpu_count() or 0}


def load_datasets(paths: list[str]) -> Dataset:
    """One dataset from ``data_files`` (datasets as ``models.training.dataset`` writes them)."""
    return merge([read_dataset(p) for p in paths])


def _slug(env_id: str) -> str:
    return env_id.replace("/", "_")
