// tickcall reference engine: a small real-time game in C++ that is the *world* of a tickcall control
// loop over the engine bridge protocol, mode 1 (docs/protocol.md, "Engine bridge (mode 1)").
//
//   engines/build/tickcall-reference-engine --connect tcp://127.0.0.1:5560 --game arena
//
// The frame loop runs at --frame-hz (60) on absolute deadlines and NEVER waits for tickcall: between
// frames it serves the socket (acks calls at once), every frame it runs the physics steps that are
// due (fixed timestep), applies the calls received since the last step, and every --obs-every frames
// sends the newest observation (the bridge keeps only the latest). It says hello, answers pings,
// pings tickcall, and says hello again whenever tickcall is gone, restarted or forgot it.
//
// --lockstep N (deterministic tests only): after every N frames the engine sends an observation
// marked wait=true and blocks until tickcall answers `step` for it; frames then do not follow the
// wall clock.
//
// --agents N (protocol 1.1, crowds): N NPCs (npc_0..npc_{N-1}), each in its own copy of the game
// (seeded seed + 1000003 * k), one observation per NPC per observation frame (`obs` with `agent`),
// each call applied to the NPC it names. --churn S: every S seconds the last NPC leaves (`bye` with
// `agent`) or comes back (its next observation makes it join). Without --agents the engine is the
// single-agent engine it always was, message for message.
//
// --ai NAME (recording mode, protocol 1.2): the engine's own AI plays (arena: chase, tickcall's
// ArenaExpert; cartpole: balance). Every 1/--ai-hz s of game time (16 Hz, tickcall's rate) the AI
// decides on the observation being sent and that observation carries what it played (`played`);
// tickcall's calls are refused (`ai_playing`) and never applied. --ai-epsilon P: a share P of the
// AI's decisions is replaced in the game by a random legal call (`played` still names the AI's). --speed X runs game time X times
// faster than the wall clock (recordings in less time; pings and --duration stay on the wall clock).
// --ai-advise (with --ai): the AI only advises. tickcall plays as without --ai (its calls apply) and each
// observation the AI decided on carries the AI's call on it as `played`: the engine's AI labels the states
// tickcall's model reaches (DAgger over the bridge: `tickcall run` records it per tick as `played`,
// `tickcall train --data RUN --labels played` learns from it). --ai-hz 1000 labels every observation.
//
// Exit codes: 0 done, 2 bad command line or socket setup, 3 fatal protocol error from tickcall
// (version mismatch, tools refused), 4 superseded by another engine.
#include <unistd.h>
#include <zmq.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "games.hpp"
#include "value.hpp"

using Clock = std::chrono::steady_clock;
using ref::Value;

namespace {

std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop = true; }

struct Options {
    std::string endpoint = "tcp://127.0.0.1:5560";
    std::string game = "arena";
    std::string name = "tickcall-reference-engine";
    std::string obs_format = "text";  // text | values
    std::string log_path;
    std::string render_path;
    std::string server_key;  // z85 CURVE public key of the bridge (enables CURVE)
    uint64_t seed = 0;
    double duration_s = 0;  // 0 = run until stopped
    double frame_hz = 60;
    int obs_every = 2;
    int lockstep = 0;
    double heartbeat_ms = 250;
    int heartbeat_misses = 4;
    int protocol_version = 1;  // tests send a wrong one on purpose
    bool quiet = false;
    int agents = 0;            // > 0: a crowd of that many NPCs (protocol 1.1); 0: one agent
    double churn_s = 0;        // crowds: every churn_s seconds the last NPC leaves or comes back
    std::string agent_prefix = "npc_";  // crowd agent ids are prefix + index
    std::string ai;            // --ai NAME: the engine's own AI plays and sends `played` (recording)
    double ai_hz = 16;         // AI decisions per second of game time
    double ai_epsilon = 0;     // share of the AI's decisions replaced in the game by a random legal call
    bool ai_advise = false;    // --ai-advise: the AI's calls label observations but are never applied
    double speed = 1;          // game seconds per wall-clock second (real-time mode)
};

void usage() {
    std::fprintf(stderr,
                 "usage: tickcall-reference-engine [--connect ENDPOINT] [--game arena|cartpole] [--seed N]\n"
                 "  [--duration S] [--frame-hz HZ] [--obs-every FRAMES] [--obs-format text|values]\n"
                 "  [--lockstep FRAMES] [--heartbeat-ms MS] [--name NAME] [--log FILE.jsonl]\n"
                 "  [--render FILE.txt] [--server-key Z85] [--protocol-version V] [--quiet]\n"
                 "  [--agents N [--churn S] [--agent-prefix P]] [--ai chase|balance [--ai-hz HZ] [--ai-epsilon P | --ai-advise]]\n"
                 "  [--speed X]\n");
}

bool parse_args(int argc, char** argv, Options& o) {
    for (int k = 1; k < argc; ++k) {
        std::string a = argv[k];
        auto next = [&]() -> std::string {
            if (k + 1 >= argc) throw std::runtime_error(a + " needs a value");
            return argv[++k];
        };
        if (a == "--connect") o.endpoint = next();
        else if (a == "--game") o.game = next();
        else if (a == "--name") o.name = next();
        else if (a == "--seed") o.seed = std::stoull(next());
        else if (a == "--duration") o.duration_s = std::stod(next());
        else if (a == "--frame-hz") o.frame_hz = std::stod(next());
        else if (a == "--obs-every") o.obs_every = std::stoi(next());
        else if (a == "--obs-format") o.obs_format = next();
        else if (a == "--lockstep") o.lockstep = std::stoi(next());
        else if (a == "--heartbeat-ms") o.heartbeat_ms = std::stod(next());
        else if (a == "--log") o.log_path = next();
        else if (a == "--render") o.render_path = next();
        else if (a == "--server-key") o.server_key = next();
        else if (a == "--protocol-version") o.protocol_version = std::stoi(next());
        else if (a == "--quiet") o.quiet = true;
        else if (a == "--agents") o.agents = std::stoi(next());
        else if (a == "--churn") o.churn_s = std::stod(next());
        else if (a == "--agent-prefix") o.agent_prefix = next();
        else if (a == "--ai") o.ai = next();
        else if (a == "--ai-hz") o.ai_hz = std::stod(next());
        else if (a == "--ai-epsilon") o.ai_epsilon = std::stod(next());
        else if (a == "--ai-advise") o.ai_advise = true;
        else if (a == "--speed") o.speed = std::stod(next());
        else if (a == "-h" || a == "--help") { usage(); std::exit(0); }
        else throw std::runtime_error("unknown option " + a);
    }
    if (o.game != "arena" && o.game != "cartpole") throw std::runtime_error("--game must be arena or cartpole");
    if (o.obs_format != "text" && o.obs_format != "values") throw std::runtime_error("--obs-format must be text or values");
    if (o.frame_hz < 1 || o.frame_hz > 1000) throw std::runtime_error("--frame-hz must be within 1..1000");
    if (o.obs_every < 1 || o.lockstep < 0) throw std::runtime_error("--obs-every must be >= 1, --lockstep >= 0");
    if (o.heartbeat_ms < 10) throw std::runtime_error("--heartbeat-ms must be >= 10");
    if (!o.server_key.empty() && o.server_key.size() != 40) throw std::runtime_error("--server-key must be 40 z85 characters");
    if (o.agents < 0 || o.agents > 1024) throw std::runtime_error("--agents must be within 1..1024");
    if (o.agents > 0 && o.lockstep > 0) throw std::runtime_error("--agents runs in real time: leave out --lockstep");
    if (o.churn_s < 0 || (o.churn_s > 0 && o.agents == 0)) throw std::runtime_error("--churn S needs --agents and S >= 0");
    if (!o.ai.empty() && o.agents > 0) throw std::runtime_error("--ai plays one agent: leave out --agents");
    if (o.ai_hz <= 0 || o.ai_hz > 1000) throw std::runtime_error("--ai-hz must be within (0, 1000]");
    if (o.ai_epsilon < 0 || o.ai_epsilon > 1) throw std::runtime_error("--ai-epsilon must be within 0..1");
    if (o.ai_advise && o.ai.empty()) throw std::runtime_error("--ai-advise needs --ai NAME (the AI that advises)");
    if (o.ai_advise && o.ai_epsilon > 0)
        throw std::runtime_error("--ai-epsilon applies to an AI that plays: leave it out with --ai-advise");
    if (o.speed < 0.1 || o.speed > 100) throw std::runtime_error("--speed must be within 0.1..100");
    return true;
}

struct PendingCall {
    int64_t id;
    std::string name;
    Value args;
    int64_t tick;     // the tickcall loop tick that decided it (-1: not from a tick)
    int64_t obs_seq;  // the observation it answers (-1: none)
    Value obs_t_ms;   // that observation's t_ms, echoed by tickcall (nil: none)
    int npc = -1;     // crowds: the NPC it is for (index into npcs_)
};

// One NPC of a crowd (--agents N): its own game, episode and counters.
struct Npc {
    std::string id;
    std::unique_ptr<ref::Game> game;
    bool present = true;
    int64_t episode = 0;
    double ep_return = 0;
    int64_t obs_sent = 0, calls_applied = 0;
};

class Runtime {
public:
    explicit Runtime(Options o) : opt_(std::move(o)) {
        game_ = make_game();
        for (int k = 0; k < opt_.agents; ++k) {
            Npc n;
            n.id = opt_.agent_prefix + std::to_string(k);
            n.game = make_game();
            npcs_.push_back(std::move(n));
        }
        std::random_device rd;
        char buf[64];
        std::snprintf(buf, sizeof buf, "%08x%08x-%d", rd(), rd(), static_cast<int>(getpid()));
        session_ = buf;
        t0_ = Clock::now();
        if (!opt_.log_path.empty()) log_.open(opt_.log_path, std::ios::app);
    }
    ~Runtime() {
        if (sock_) zmq_close(sock_);
        if (ctx_) zmq_ctx_term(ctx_);
    }

    int run() {
        if (!opt_.ai.empty() && game_->ai_call(opt_.ai).kind == Value::Nil) {
            std::fprintf(stderr, "tickcall-reference-engine: --ai %s: the %s game's AI is '%s'\n", opt_.ai.c_str(),
                         game_->name().c_str(), game_->ai_names().c_str());
            return 2;
        }
        if (!open_socket()) return 2;
        noise_rng_.seed(opt_.seed + 0x5eed);
        game_->reset(opt_.seed);
        for (size_t k = 0; k < npcs_.size(); ++k) npcs_[k].game->reset(npc_seed(k, 0));
        log_event("start", Value::object({{"game", game_->name()}, {"session", session_}, {"seed", static_cast<int64_t>(opt_.seed)},
                                          {"lockstep", opt_.lockstep}}));
        say("engine %s (%s, session %s) -> %s%s%s", opt_.name.c_str(), game_->name().c_str(), session_.c_str(),
            opt_.endpoint.c_str(), opt_.lockstep ? " [LOCK-STEP]" : "",
            opt_.ai.empty() ? "" : (" [AI " + opt_.ai + " plays]").c_str());
        send_hello();
        const double frame_dt = 1.0 / opt_.frame_hz;  // game seconds per frame
        const auto period = std::chrono::duration_cast<Clock::duration>(
            std::chrono::duration<double>(frame_dt / opt_.speed));  // wall seconds per frame
        auto next = Clock::now();
        auto last = next;
        while (!g_stop && exit_code_ < 0) {
            if (opt_.duration_s > 0 && elapsed_s() >= opt_.duration_s) break;
            double dt_frame = frame_dt;
            if (opt_.lockstep == 0) {
                serve_until(next);  // the only wait: for our own frame deadline, serving the socket meanwhile
                const auto now = Clock::now();
                dt_frame = std::min(0.25, std::chrono::duration<double>(now - last).count() * opt_.speed);
                last = now;
                next += period;
                if (now - next > period) {  // more than a frame behind: skip ahead, never burst
                    const auto missed = (now - next) / period;
                    late_frames_ += missed;
                    next += period * missed;
                }
            } else {
                serve_until(Clock::now());
            }
            ++frame_;
            heartbeat();
            if (crowd()) {
                churn();
                advance_crowd(dt_frame);
                if (frame_ % opt_.obs_every == 0) send_crowd_obs();
                if (!opt_.render_path.empty() && frame_ % 30 == 0) render();
                continue;
            }
            advance(dt_frame);
            const int every = opt_.lockstep > 0 ? opt_.lockstep : opt_.obs_every;
            if (frame_ % every == 0) {
                ai_decide();
                send_obs(opt_.lockstep > 0);
                if (opt_.lockstep > 0) wait_for_step();
            }
            if (!opt_.render_path.empty() && frame_ % 30 == 0) render();
        }
        if (welcomed_) send(Value::object({{"v", opt_.protocol_version}, {"type", "bye"}, {"reason", "engine stopping"}}));
        if (crowd() && sock_) {  // a crowd's last frame is N messages: let them and the bye reach tickcall
            int linger = 100;
            zmq_setsockopt(sock_, ZMQ_LINGER, &linger, sizeof linger);
        }
        finish_log();
        return exit_code_ < 0 ? 0 : exit_code_;
    }

private:
    // ---- socket ----------------------------------------------------------------------------------------
    bool open_socket() {
        if (!ctx_) ctx_ = zmq_ctx_new();
        if (sock_) zmq_close(sock_);
        sock_ = zmq_socket(ctx_, ZMQ_DEALER);
        opened_ = Clock::now();
        // a crowd sends one message per NPC per frame: its queue holds as many frames as a single agent's
        int zero = 0, one = 1, hwm = 200 * std::max(1, opt_.agents), ivl = 100;
        int64_t maxmsg = 4 << 20;
        zmq_setsockopt(sock_, ZMQ_LINGER, &zero, sizeof zero);
        zmq_setsockopt(sock_, ZMQ_IMMEDIATE, &one, sizeof one);  // never queue for a peer that is not there
        zmq_setsockopt(sock_, ZMQ_SNDHWM, &hwm, sizeof hwm);
        zmq_setsockopt(sock_, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
        zmq_setsockopt(sock_, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
        if (!opt_.server_key.empty()) {
            char pub[41], sec[41];
            if (zmq_curve_keypair(pub, sec) != 0) {
                std::fprintf(stderr, "[engine] CURVE is not available in this libzmq\n");
                return false;
            }
            zmq_setsockopt(sock_, ZMQ_CURVE_SERVERKEY, opt_.server_key.c_str(), 41);
            zmq_setsockopt(sock_, ZMQ_CURVE_PUBLICKEY, pub, 41);
            zmq_setsockopt(sock_, ZMQ_CURVE_SECRETKEY, sec, 41);
        }
        if (zmq_connect(sock_, opt_.endpoint.c_str()) != 0) {
            std::fprintf(stderr, "[engine] cannot connect to %s: %s\n", opt_.endpoint.c_str(), zmq_strerror(zmq_errno()));
            return false;
        }
        return true;
    }

    bool send(const Value& msg) {  // never blocks: a message that cannot go now is dropped and counted
        const std::string bytes = ref::pack(msg);
        if (zmq_send(sock_, bytes.data(), bytes.size(), ZMQ_DONTWAIT) < 0) {
            ++send_drops_;
            return false;
        }
        return true;
    }

    // Serve the socket until `deadline` (acks go out at once), then return.
    void serve_until(Clock::time_point deadline) {
        for (;;) {
            drain();
            const auto now = Clock::now();
            if (now >= deadline) return;
            const long ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count();
            if (ms <= 0) {
                std::this_thread::sleep_until(deadline);
                drain();
                return;
            }
            zmq_pollitem_t item{sock_, 0, ZMQ_POLLIN, 0};
            zmq_poll(&item, 1, ms);
        }
    }

    void drain() {
        for (int k = 0; k < 1000 && exit_code_ < 0; ++k) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, sock_, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&m);
                return;
            }
            const bool more = zmq_msg_more(&m);
            std::string data(static_cast<const char*>(zmq_msg_data(&m)), zmq_msg_size(&m));
            zmq_msg_close(&m);
            last_heard_ = Clock::now();
            if (more) {
                ++bad_messages_;
                continue;
            }
            try {
                handle(ref::unpack(data.data(), data.size()));
            } catch (const std::exception& e) {
                ++bad_messages_;
                say("undecodable message from tickcall: %s", e.what());
            }
        }
    }

    // ---- protocol ----------------------------------------------------------------------------------------
    void send_hello() {
        if (exit_code_ >= 0) return;  // a fatal error ended this engine's session for good
        Value obs = Value::object({{"format", opt_.obs_format}, {"description", game_->description()}});
        if (opt_.obs_format == "values") obs.set("fields", game_->obs_fields());
        Value hello = Value::object({{"v", opt_.protocol_version}, {"type", "hello"}, {"engine", opt_.name},
                                     {"engine_version", "1.0"}, {"session", session_}, {"tools", game_->tools()},
                                     {"observation", obs}, {"frame_hz", opt_.frame_hz},
                                     {"heartbeat_ms", opt_.heartbeat_ms}, {"lockstep", opt_.lockstep},
                                     {"default_call", game_->default_call()}});
        if (!game_->gym_id().empty()) hello.set("game", game_->gym_id());  // protocol 1.2: the same game as
        if (crowd()) {  // protocol 1.1: the NPCs present now, and how many there may be
            Value ids = Value::array();
            for (const auto& n : npcs_)
                if (n.present) ids.arr.emplace_back(n.id);
            hello.set("agents", ids);
            hello.set("max_agents", opt_.agents);
        }
        last_hello_ = Clock::now();
        if (send(hello)) ++hellos_;  // not sent (no connection yet): heartbeat() retries in 100 ms
    }

    void handle(const Value& msg) {
        const std::string type = msg.str_or("type", "");
        if (msg.int_or("v", -1) != 1) {
            say("tickcall message with unsupported protocol version (type %s)", type.c_str());
            return;
        }
        if (type == "welcome") {
            if (msg.str_or("session", "") != session_) return;  // an answer to an older hello
            if (crowd() && !msg.get("max_agents")) {  // a bridge older than protocol 1.1
                std::fprintf(stderr, "[engine] tickcall's bridge does not speak crowds (protocol 1.1: its welcome "
                                     "has no max_agents): upgrade tickcall, or run without --agents\n");
                exit_code_ = 3;
                return;
            }
            welcomed_ = true;
            epoch_ = msg.str_or("epoch", "");
            ++sessions_;
            say("welcomed by tickcall (epoch %s)", epoch_.c_str());
            log_event("welcome", Value::object({{"epoch", epoch_}}));
        } else if (type == "call") {
            on_call(msg);
        } else if (type == "step") {
            if (msg.int_or("seq", -1) == waiting_seq_) waiting_seq_ = -1;
        } else if (type == "ping") {
            send(Value::object({{"v", opt_.protocol_version}, {"type", "pong"}, {"t_ms", msg.get("t_ms") ? *msg.get("t_ms") : Value(0.0)}}));
            if (welcomed_ && msg.str_or("epoch", epoch_) != epoch_) {
                say("tickcall restarted (new epoch): saying hello again");
                welcomed_ = false;
                send_hello();
            }
        } else if (type == "pong") {
            // liveness only (last_heard_ is refreshed for every message)
        } else if (type == "error") {
            on_error(msg);
        } else if (type == "bye") {
            say("tickcall said bye: %s", msg.str_or("reason", "").c_str());
            welcomed_ = false;
        }
    }

    void on_error(const Value& msg) {
        const std::string code = msg.str_or("code", "?"), text = msg.str_or("message", "");
        const Value* fatal = msg.get("fatal");
        ++errors_received_;
        std::fprintf(stderr, "[engine] tickcall error %s: %s\n", code.c_str(), text.c_str());
        log_event("error", Value::object({{"code", code}, {"message", text}}));
        if (fatal && fatal->kind == Value::Bool && fatal->b) {
            exit_code_ = code == "superseded" ? 4 : 3;
            welcomed_ = false;
            return;
        }
        if (code == "no_session") {  // tickcall restarted or dropped us: hello again (at most every 250 ms)
            welcomed_ = false;
            if (Clock::now() - last_hello_ > std::chrono::milliseconds(250)) send_hello();
        }
    }

    void on_call(const Value& msg) {
        const int64_t id = msg.int_or("id", -1);
        const std::string name = msg.str_or("name", "");
        const Value* args = msg.get("arguments");
        ++calls_received_;
        if (!opt_.ai.empty() && !opt_.ai_advise) {  // recording mode: the engine's AI plays; tickcall's calls never apply
            ++calls_rejected_;
            send_result(id, false, Value(), "ai_playing",
                        "this engine's AI plays (--ai " + opt_.ai + "): calls from tickcall are not applied; "
                        "restart the engine without --ai to let tickcall play");
            return;
        }
        int npc = -1;
        if (crowd()) {  // every call names a present NPC
            const std::string agent = msg.str_or("agent", "");
            for (size_t k = 0; k < npcs_.size(); ++k)
                if (npcs_[k].id == agent && npcs_[k].present) npc = static_cast<int>(k);
            if (npc < 0) {
                ++calls_rejected_;
                send_result(id, false, Value(), "unknown_agent",
                            agent.empty() ? "the call names no agent (this engine runs a crowd)"
                                          : "no agent '" + agent + "' is present");
                return;
            }
        }
        const std::string reason = args ? ref::validate_call(game_->tools(), name, *args) : "arguments missing";
        if (!reason.empty()) {
            ++calls_rejected_;
            send_result(id, false, Value(), ref::find_tool(game_->tools(), name) ? "bad_arguments" : "unknown_tool", reason);
            return;
        }
        const size_t limit = 256 * static_cast<size_t>(std::max(1, opt_.agents));
        if (pending_.size() >= limit) {
            ++calls_rejected_;
            send_result(id, false, Value(), "busy", "more than " + std::to_string(limit) +
                                                        " calls waiting for the next physics step");
            return;
        }
        send(Value::object({{"v", opt_.protocol_version}, {"type", "ack"}, {"id", id}, {"frame", frame_}}));
        const Value* obs_t = msg.get("obs_t_ms");
        pending_.push_back({id, name, *args, msg.int_or("tick", -1), msg.int_or("obs_seq", -1),
                            obs_t && obs_t->is_number() ? *obs_t : Value(), npc});
    }

    void send_result(int64_t id, bool ok, const Value& value, const std::string& code, const std::string& message) {
        Value r = Value::object({{"v", opt_.protocol_version}, {"type", "result"}, {"id", id}, {"ok", ok}, {"frame", frame_}});
        if (ok) r.set("value", value);
        else r.set("error", Value::object({{"code", code}, {"message", message}}));
        send(r);
    }

    void heartbeat() {
        const auto now = Clock::now();
        const auto hb = std::chrono::duration<double, std::milli>(opt_.heartbeat_ms);
        if (welcomed_ && now - last_ping_ >= hb) {  // pings belong to a session; before it, hello
            last_ping_ = now;
            send(Value::object({{"v", opt_.protocol_version}, {"type", "ping"}, {"t_ms", elapsed_s() * 1e3}}));
        }
        if (welcomed_ && now - last_heard_ > hb * opt_.heartbeat_misses) {
            say("tickcall silent for %.0f ms: reconnecting", std::chrono::duration<double, std::milli>(now - last_heard_).count());
            welcomed_ = false;
            ++lost_;
            log_event("tickcall_lost", Value::object());
            reopen("tickcall silent");
        } else if (!welcomed_ && now - opened_ > kReopenAfter && now - last_heard_ > kReopenAfter) {
            // hellos unanswered: libzmq ends a connection for good after a protocol error (a frame over
            // ZMQ_MAXMSGSIZE) and never reconnects it, so a fresh socket is the only way back
            reopen("no welcome");
        }
        if (!welcomed_ && now - last_hello_ >= std::chrono::milliseconds(100)) send_hello();
    }

    // ---- game --------------------------------------------------------------------------------------------
    // --ai: every 1/ai_hz s of game time, the AI decides on the state the coming observation shows; the
    // call is applied at the next physics step (as tickcall's are) and sent with that observation.
    void ai_decide() {
        played_ = Value();
        if (opt_.ai.empty() || game_s_ + 1e-9 < next_ai_s_) return;
        played_ = game_->ai_call(opt_.ai);
        next_ai_s_ = std::max(next_ai_s_ + 1.0 / opt_.ai_hz, game_s_);  // never bursts to catch up
        ++ai_calls_;
        if (opt_.ai_advise) return;  // advice only: tickcall's calls play
        // --ai-epsilon: now and then the game applies a random legal call instead, while the observation
        // still says what the AI decided: the label stays the AI's, the states it then meets spread out
        // (what tickcall record's --epsilon does for Python teachers)
        Value applied = played_;
        if (opt_.ai_epsilon > 0 && std::uniform_real_distribution<double>(0, 1)(noise_rng_) < opt_.ai_epsilon) {
            applied = ref::random_call(game_->tools(), noise_rng_);
            ++ai_noise_;
        }
        pending_.push_back({-1, applied.get("name")->s, *applied.get("arguments"), -1, -1, Value(), -1});
    }

    void advance(double dt_frame) {
        game_s_ += dt_frame;
        acc_ += dt_frame;
        while (acc_ >= game_->physics_dt() - 1e-9) {
            acc_ -= game_->physics_dt();
            while (!pending_.empty()) {  // calls received since the last physics step, in order
                PendingCall c = std::move(pending_.front());
                pending_.pop_front();
                ref::ApplyResult r = game_->apply(c.name, c.args);
                ++calls_applied_;
                if (c.id >= 0) send_result(c.id, r.ok, r.value, r.code, r.message);  // AI calls (id -1): no result
                log_event(c.id >= 0 ? "call" : "ai_call", Value::object({{"id", c.id}, {"name", c.name}, {"arguments", c.args}, {"ok", r.ok},
                                                 {"error", r.code}, {"frame", frame_}, {"step", game_->steps()},
                                                 {"tick", c.tick}, {"obs_seq", c.obs_seq}, {"obs_t_ms", c.obs_t_ms}}));
            }
            ep_return_ += game_->step();
            std::string reason;
            if (game_->finished(reason)) {
                send(Value::object({{"v", opt_.protocol_version}, {"type", "episode"}, {"index", episode_},
                                    {"return", ep_return_}, {"length", game_->steps()}, {"reason", reason}}));
                log_event("episode", Value::object({{"index", episode_}, {"return", ep_return_}, {"length", game_->steps()},
                                                    {"reason", reason}}));
                say("episode %lld: return %.2f, %d steps (%s)", static_cast<long long>(episode_), ep_return_, game_->steps(), reason.c_str());
                ++episode_;
                ep_return_ = 0;
                game_->reset(opt_.seed + static_cast<uint64_t>(episode_));
            }
        }
    }

    // ---- crowds (--agents N) ------------------------------------------------------------------------------
    bool crowd() const { return opt_.agents > 0; }
    uint64_t npc_seed(size_t k, int64_t episode) const {
        return opt_.seed + 1000003ULL * k + static_cast<uint64_t>(episode);
    }
    std::unique_ptr<ref::Game> make_game() const {
        if (opt_.game == "arena") return std::make_unique<ref::Arena>();
        return std::make_unique<ref::CartPole>();
    }

    // Every NPC runs the same fixed physics step; calls apply to the NPC they name, in arrival order.
    void advance_crowd(double dt_frame) {
        acc_ += dt_frame;
        while (acc_ >= game_->physics_dt() - 1e-9) {
            acc_ -= game_->physics_dt();
            while (!pending_.empty()) {
                PendingCall c = std::move(pending_.front());
                pending_.pop_front();
                Npc& n = npcs_[static_cast<size_t>(c.npc)];
                if (!n.present) {  // it left after the call arrived
                    ++calls_rejected_;
                    send_result(c.id, false, Value(), "unknown_agent", "agent '" + n.id + "' left");
                    continue;
                }
                ref::ApplyResult r = n.game->apply(c.name, c.args);
                ++calls_applied_;
                ++n.calls_applied;
                send_result(c.id, r.ok, r.value, r.code, r.message);
                log_event("call", Value::object({{"id", c.id}, {"agent", n.id}, {"name", c.name}, {"arguments", c.args},
                                                 {"ok", r.ok}, {"error", r.code}, {"frame", frame_},
                                                 {"step", n.game->steps()}, {"tick", c.tick}, {"obs_seq", c.obs_seq},
                                                 {"obs_t_ms", c.obs_t_ms}}));
            }
            for (size_t k = 0; k < npcs_.size(); ++k) {
                Npc& n = npcs_[k];
                if (!n.present) continue;
                n.ep_return += n.game->step();
                std::string reason;
                if (n.game->finished(reason)) {
                    send(Value::object({{"v", opt_.protocol_version}, {"type", "episode"}, {"index", n.episode},
                                        {"return", n.ep_return}, {"length", n.game->steps()}, {"reason", reason},
                                        {"agent", n.id}}));
                    log_event("episode", Value::object({{"agent", n.id}, {"index", n.episode}, {"return", n.ep_return},
                                                        {"length", n.game->steps()}, {"reason", reason}}));
                    ++n.episode;
                    ++episode_;
                    n.ep_return = 0;
                    n.game->reset(npc_seed(k, n.episode));
                }
            }
        }
    }

    // One observation per present NPC, all with this frame's seq (seq increases per agent).
    void send_crowd_obs() {
        ++obs_seq_;
        const double t_ms = elapsed_s() * 1e3;
        for (auto& n : npcs_) {
            if (!n.present) continue;
            Value obs = Value::object({{"v", opt_.protocol_version}, {"type", "obs"}, {"seq", obs_seq_}, {"frame", frame_},
                                       {"t_ms", t_ms}, {"episode", n.episode}, {"return", n.ep_return},
                                       {"done", false}, {"wait", false}, {"agent", n.id}});
            if (opt_.obs_format == "values") obs.set("values", n.game->obs_values());
            else obs.set("text", n.game->obs_text());
            if (!welcomed_) {
                ++obs_unsent_;
                continue;
            }
            if (send(obs)) {
                ++obs_sent_;
                ++n.obs_sent;
            }
        }
    }

    // --churn S: every S seconds the last NPC leaves (bye with agent) or comes back in a fresh episode.
    void churn() {
        if (opt_.churn_s <= 0 || npcs_.empty()) return;
        const int64_t every = std::max<int64_t>(1, std::llround(opt_.churn_s * opt_.frame_hz));
        if (frame_ % every != 0) return;
        Npc& n = npcs_.back();
        n.present = !n.present;
        ++churns_;
        if (!n.present) {
            if (welcomed_) send(Value::object({{"v", opt_.protocol_version}, {"type", "bye"}, {"reason", "despawned"},
                                               {"agent", n.id}}));
        } else {
            ++n.episode;
            n.ep_return = 0;
            n.game->reset(npc_seed(npcs_.size() - 1, n.episode));
        }
        log_event(n.present ? "agent_join" : "agent_leave", Value::object({{"agent", n.id}, {"frame", frame_}}));
        say("agent %s %s", n.id.c_str(), n.present ? "joins" : "leaves");
    }

    void send_obs(bool wait) {
        Value obs = Value::object({{"v", opt_.protocol_version}, {"type", "obs"}, {"seq", ++obs_seq_}, {"frame", frame_},
                                   {"t_ms", elapsed_s() * 1e3}, {"episode", episode_}, {"return", ep_return_},
                                   {"done", false}, {"wait", wait}});
        if (opt_.obs_format == "values") obs.set("values", game_->obs_values());
        else obs.set("text", game_->obs_text());
        if (played_.kind != Value::Nil) obs.set("played", played_);  // protocol 1.2: what the AI played on it
        if (!welcomed_) {
            ++obs_unsent_;
            return;
        }
        if (send(obs)) ++obs_sent_;
        if (wait) waiting_seq_ = obs_seq_;
    }

    // LOCK-STEP: block until tickcall answers `step` for our observation (serving pings meanwhile).
    void wait_for_step() {
        while (!g_stop && exit_code_ < 0) {
            if (opt_.duration_s > 0 && elapsed_s() >= opt_.duration_s) return;
            if (welcomed_ && waiting_seq_ < 0) return;
            const bool was_welcomed = welcomed_;
            serve_until(Clock::now() + std::chrono::milliseconds(5));
            heartbeat();
            if (!was_welcomed && welcomed_) send_obs(true);  // a new session: offer the observation again
            if (welcomed_ && waiting_seq_ < 0) return;
        }
    }

    // ---- output --------------------------------------------------------------------------------------------
    void render() {
        const std::string tmp = opt_.render_path + ".tmp";
        {
            std::ofstream f(tmp, std::ios::trunc);
            f << (crowd() ? npcs_[0].id + "\n" + npcs_[0].game->render_ascii() : game_->render_ascii());
        }
        std::rename(tmp.c_str(), opt_.render_path.c_str());
    }

    void log_event(const std::string& event, Value info) {
        if (!log_.is_open()) return;
        info.map.insert(info.map.begin(), {"t_ms", elapsed_s() * 1e3});
        info.map.insert(info.map.begin(), {"event", event});
        log_ << ref::to_json(info) << '\n';
        log_.flush();
    }

    void finish_log() {
        Value stats = Value::object({{"frames", frame_}, {"late_frames", static_cast<int64_t>(late_frames_)},
                                     {"obs_sent", obs_sent_}, {"obs_unsent", obs_unsent_}, {"send_drops", send_drops_},
                                     {"calls_received", calls_received_}, {"calls_applied", calls_applied_},
                                     {"calls_rejected", calls_rejected_}, {"hellos", hellos_}, {"sessions", sessions_},
                                     {"tickcall_lost", lost_}, {"errors_received", errors_received_},
                                     {"bad_messages", bad_messages_}, {"reconnects", reopens_}, {"episodes", episode_},
                                     {"elapsed_s", elapsed_s()}});
        if (!opt_.ai.empty()) {
            stats.set("ai_calls", ai_calls_);
            stats.set("ai_noise_calls", ai_noise_);
        }
        if (crowd()) {  // per NPC: observations sent and calls applied
            Value per = Value::object();
            for (const auto& n : npcs_)
                per.set(n.id, Value::object({{"obs_sent", n.obs_sent}, {"calls_applied", n.calls_applied},
                                             {"present", n.present}}));
            stats.set("agents", per);
            stats.set("churns", churns_);
        }
        log_event("stats", stats);
        if (!opt_.quiet) std::fprintf(stderr, "[engine] stats %s\n", ref::to_json(stats).c_str());
    }

    template <typename... A>
    void say(const char* fmt, A... args) {
        if (opt_.quiet) return;
        std::fprintf(stderr, "[engine %.3fs] ", elapsed_s());
        std::fprintf(stderr, fmt, args...);
        std::fputc('\n', stderr);
    }
    void say(const char* text) { say("%s", text); }

    double elapsed_s() const { return std::chrono::duration<double>(Clock::now() - t0_).count(); }

    Options opt_;
    std::unique_ptr<ref::Game> game_;
    void* ctx_ = nullptr;
    void* sock_ = nullptr;
    Clock::time_point opened_{};
    static constexpr std::chrono::seconds kReopenAfter{2};  // unanswered hellos before a fresh socket

    void reopen(const char* why) {
        ++reopens_;
        log_event("reconnect", Value::object({{"why", std::string(why)}}));
        if (!open_socket()) say("cannot reopen the socket to %s", opt_.endpoint.c_str());
    }
    std::string session_, epoch_;
    std::ofstream log_;
    Clock::time_point t0_, last_heard_{}, last_ping_{}, last_hello_{};
    std::deque<PendingCall> pending_;
    std::vector<Npc> npcs_;  // crowds only (--agents N)
    int64_t churns_ = 0;
    bool welcomed_ = false;
    int exit_code_ = -1;
    double acc_ = 0, ep_return_ = 0;
    double game_s_ = 0, next_ai_s_ = 0;  // game time (s) and the AI's next decision (--ai)
    Value played_;                       // what the AI played on the observation about to go out
    int64_t ai_calls_ = 0, ai_noise_ = 0;
    std::mt19937_64 noise_rng_{0x5eed};  // --ai-epsilon draws (seeded: the same run twice is the same)
    int64_t frame_ = 0, obs_seq_ = 0, waiting_seq_ = -1, episode_ = 0;
    int64_t obs_sent_ = 0, obs_unsent_ = 0, send_drops_ = 0, calls_received_ = 0, calls_applied_ = 0,
            calls_rejected_ = 0, hellos_ = 0, sessions_ = 0, lost_ = 0, errors_received_ = 0, bad_messages_ = 0,
            reopens_ = 0;
    long long late_frames_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
    Options opt;
    try {
        parse_args(argc, argv, opt);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "tickcall-reference-engine: %s\n", e.what());
        usage();
        return 2;
    }
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    Runtime rt(opt);
    return rt.run();
}
