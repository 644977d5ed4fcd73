"""The model card (README.md in the model folder): what the student is, its data, the command that
made it, and its scores against the teacher."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tickcall.models.format import special_tokens
from tickcall.models.tools import MAX_ARITY


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


# The card of a 6-head student reads as it did before students could have more heads.
def _token_text(max_heads: int) -> str:
    n = len(special_tokens(max_heads))
    return f"{n} SimpleTool tokens" + ("" if max_heads == MAX_ARITY else f" ({max_heads} argument heads)")


def _weights_text(max_heads: int) -> str:
    """The head weights of ``rows.default_head_weights`` in words."""
    if max_heads <= MAX_ARITY:
        return f"arg1..arg{max_heads} 1.1..{1 + 0.1 * max_heads:.1f}"
    return f"arg1..arg6 1.1..1.6, arg7..arg{max_heads} 1.6"


def _teachers_text(cfg) -> str:
    kind = getattr(getattr(cfg, "teacher", None), "kind", "expert")
    data = getattr(cfg, "data_files", None) or []
    who = {"expert": "the scripted expert of each env", "none": "recorded data only"}.get(
        kind,
        f"the teacher `{kind}`"
        + (
            " (Stable-Baselines3, trained by this run)" if kind in ("ppo", "a2c", "dqn", "sac", "td3") else ""
        ),
    )
    return who + (f", with the datasets {', '.join(f'`{d}`' for d in data)}" if data else "")


def _teacher_figures(scores: dict[str, Any]) -> str:
    """`` (Acrobot-v1: 50000 steps in 41 s, return -82.3)`` for teachers trained by the run."""
    parts = [
        f"{e}: {t['steps']} steps in {t['train_s']:.0f} s, return {t['mean_return']:.1f}"
        for e, s in scores.get("envs", {}).items()
        if "train_s" in (t := s.get("teacher") or {})
    ]
    return f" ({'; '.join(parts)})" if parts else ""


def _rollouts_text(cfg) -> str:
    """How the rows were made: teacher rollouts (episodes, noise), or only the datasets' rows."""
    if getattr(cfg.teacher, "kind", "expert") == "none":
        return (
            f"The rows are the datasets' own turns; {_pct(cfg.data.heldout_share)} of each env's rows "
            f"held out by whole episodes (or contiguous blocks with {cfg.data.heldout_gap} training rows "
            f"dropped on each side), seed {cfg.seed} (`models/training/split.py`)."
        )
    return (
        f"{cfg.data.episodes} seeded episodes per env, random actions at rate {cfg.data.epsilon}, state "
        f"perturbations at rate {cfg.data.perturb_prob} per decision; each decision held for the env's "
        "real-time hold (16 Hz)."
    )


def _agreement_text(acc: dict[str, Any]) -> str:
    """The held-out agreement of a student with the data's labels (a logged model, an engine's AI)."""
    sp = acc["split"]
    heads = " ".join(f"{h} {_pct(v)}" for h, v in acc["per_head"].items())
    args = " ".join(f"`{k}` {_pct(v)}" for k, v in acc.get("per_arg", {}).items())
    return (
        f"- Agreement with the data's labels on {acc['n']} held-out turns ({sp['heldout_rows']} of "
        f"{sp['heldout_rows'] + sp['train_rows'] + sp['gap_dropped']} rows: {len(sp['heldout_groups'])} of "
        f"{sp['groups']} {sp['unit']}s, never trained on): exact call {_pct(acc['exact_call'])}; legal "
        f"{_pct(acc['legal_rate'])}; per head {heads}" + (f"; per argument {args}" if args else "") + "."
    )


def _machine_text(scores: dict[str, Any]) -> str:
    m = scores.get("machine")
    if not m:
        return "machine not recorded"
    return f"{m.get('cpu', 'CPU')}, {m.get('cores', '?')} cores, shared with other jobs"


def write_card(folder: Path, cfg, scores: dict[str, Any], command: str | None = None) -> Path:
    """Write ``folder/README.md`` from the config and ``scores`` (the pipeline's result dict)."""
    lines = [
        f"# {cfg.name}",
        "",
        f"A small SimpleTool-format student distilled by tickcall from {_teachers_text(cfg)} "
        "(`tickcall train`). It emits one function call per tick with parallel heads "
        "(`<function>`, `<arg1>`..`<argN>`); prompt template `" + cfg.template + "`.",
        "",
        f"History items per turn in training: {cfg.data.history_len} (`tickcall.json` `history_len`; "
        f"style `{cfg.data.history_style}`, AsyncFC status lines rendered by `tickcall.models.prompt_text`); "
        "run it the same way (`envs.policies.ModelPolicy.from_path` and the control loop read it).",
        "",
        "## Model",
        "",
        f"- Architecture: Qwen2, hidden {cfg.model.hidden}, {cfg.model.layers} layers, "
        f"{cfg.model.heads} attention heads ({cfg.model.kv_heads} KV), MLP {cfg.model.intermediate}; "
        f"{scores.get('params', 0) / 1e6:.2f}M parameters, tied embeddings, float32 safetensors.",
        f"- Tokenizer: byte-level BPE, {scores.get('vocab', '?')} tokens, trained on this run's prompts; "
        f"chat tokens and the {_token_text(cfg.model.max_heads)} are single ids, digits split one per token.",
        f"- Envs: {', '.join(cfg.envs)}."
        + (
            f" Initialised from `{cfg.init_from}` (an earlier run of this recipe), then trained further."
            if cfg.init_from
            else ""
        ),
        "",
        "## Data",
        "",
        f"- Teacher: {_teachers_text(cfg)}{_teacher_figures(scores)}. " + _rollouts_text(cfg),
        *(
            [
                f"- Coverage: {cfg.data.coverage} more states per env sampled directly over the state space the text "
                "can show (`models/training/coverage.py`: balanced over the teacher's cases, dense beside its "
                "decision thresholds), labelled by the same teacher."
            ]
            if getattr(cfg.data, "coverage", 0)
            else []
        ),
        *(
            [
                "- Labels: the teacher decides on the observation as the text shows it (numbers rounded to the "
                "text's precision), so every label is a function of the student's input."
            ]
            if getattr(cfg.data, "text_labels", False)
            else []
        ),
        *(
            [
                "- Soft targets: where the teacher scores its choices (a Stable-Baselines3 policy's action "
                "logits, or Q-values for DQN; the scripted experts of `tickcall.envs.experts.EXPERT_LOGITS`: "
                "CartPole's margin 0.05 x + 0.3 v + 3 a + 0.6 w is the logit of `right`; LunarLander's "
                "heuristic scores each engine by how far its correction is past its threshold), the first "
                f"value token learns softmax(logit / {cfg.data.soft_tau}) "
                "instead of the one-hot label; the label is still the teacher's choice."
            ]
            if getattr(cfg.data, "soft_tau", 0)
            else []
        ),
        (
            f"- DAgger: {cfg.dagger.rounds} round(s) of {cfg.dagger.episodes} student episodes per env, "
            "visited states relabelled by the teacher."
            if cfg.dagger.rounds
            else "- DAgger: none."
        ),
        f"- Rows per env (all rounds): {json.dumps(scores.get('rows', {}))}. One branch per head "
        f"({cfg.heads_mode} heads), loss on the target only, head weights function 2.0, "
        f"{_weights_text(cfg.model.max_heads)}.",
        f"- Training: {cfg.train.steps} steps"
        + (f" (+{cfg.dagger.steps} per DAgger round)" if cfg.dagger.rounds else "")
        + ", batch "
        f"{cfg.train.batch_size}, AdamW lr {cfg.train.lr}, seed {cfg.seed}.",
        "",
        "## Command",
        "",
        "```",
        command or f"tickcall train --config {getattr(cfg, 'source_path', 'CONFIG')}",
        f"tickcall train --config {getattr(cfg, 'source_path', 'CONFIG')} --evaluate {cfg.out} --episodes 20 --card"
        "   # real-time figures",
        "```",
        "",
        "## Scores",
        "",
        "Held-out states (teacher rollouts with unseen seeds; for an env labelled only by data, turns of "
        "the data held out before training): share of states where each head's text equals the label's.",
        "",
    ]
    for env_id, s in scores.get("envs", {}).items():
        acc = s["heldout"]
        heads = " ".join(f"{h} {_pct(v)}" for h, v in acc["per_head"].items())
        lock = s.get("lockstep")
        lines += [f"### {env_id}", ""]
        if acc.get("split"):
            lines.append(_agreement_text(acc))
            sv = acc.get("served")
            if sv:
                lines.append(
                    f"- The same turns as `tickcall run` serves the model (the transformers engine, constrained "
                    f"heads: argument heads decoded under the chosen tool's grammar): exact call "
                    f"{_pct(sv['exact_call'])}; tool {_pct(sv['function'])}; legal {_pct(sv['legal_rate'])}."
                )
        else:
            lines.append(
                f"- Head accuracy ({acc['n']} states): {heads}; exact call {_pct(acc['exact_call'])}; "
                f"legal {_pct(acc['legal_rate'])}."
            )
        cov = s.get("heldout_coverage")
        if cov:
            heads = " ".join(f"{h} {_pct(v)}" for h, v in cov["per_head"].items())
            lines.append(
                f"- Head accuracy on held-out sampled states ({cov['n']}, balanced over the teacher's "
                f"cases): {heads}; exact call {_pct(cov['exact_call'])}; legal {_pct(cov['legal_rate'])}."
            )
        if lock:
            te = lock.get("teacher")
            te_text = f"{te['mean_return']:.1f}" if te else "n/a (no teacher at train time)"
            lines.append(
                f"- Lock-step closed loop (action held {lock['hold']} physics steps, {lock['student']['episodes']} "
                f"seeded episodes): student {lock['student']['mean_return']:.1f}, teacher {te_text}, random "
                f"{lock['random']['mean_return']:.1f}."
            )
        rt = s.get("realtime")
        if s.get("realtime_skipped"):
            lines.append(f"- Real-time loop: not run ({s['realtime_skipped']}).")
        if rt:
            lines.append(
                f"- Real-time loop at {rt.get('hz', 16)} Hz ({rt['episodes']} seeded episodes): student "
                f"{rt['student_return']:.1f}, teacher {rt['teacher_return']:.1f} "
                f"({_pct(rt['ratio'])} of teacher); legal {_pct(rt['legal_rate'])}; deadline misses "
                f"{rt['deadline_misses']}; decide P50 {rt['decide_p50_ms']:.2f} ms, "
                f"P90 {rt['decide_p90_ms']:.2f} ms."
            )
        lines.append("")
    t = scores.get("timings_s", {})
    if t:
        lines += [
            f"Wall time of the last invocation (a resumed run counts only the stages it ran): teacher "
            f"{t.get('teacher_s', 0):.0f} s, collection "
            f"{t.get('collect_s', 0):.0f} s, training {t.get('train_s', 0):.0f} s ({_machine_text(scores)}).",
            "",
        ]
    path = Path(folder) / "README.md"
    path.write_text("\n".join(lines))
    return path
