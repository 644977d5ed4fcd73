// The reference engine's games: deterministic under a seed, advanced by fixed physics steps.
//
// * arena    - a C++ port of tickcall/Arena-v0 (envs/arena.py): same tools, same rules, same
//              observation text ("tgt=SE d=2.4 aim=N cd=0 dcd=0 tl=3.0"), physics step 0.05 s.
//              Real-time semantics: `move` persists until another call replaces it; aim, fire,
//              dash and wait act once. fire/dash during their cooldown end with an error result.
// * cartpole - CartPole-v1's physics (gymnasium's Euler equations, tau 0.02 s, 500-step limit);
//              `push(direction)` holds its force until replaced. Text "x=+0.014 v=-0.023 ...".
//
// The frame loop (main.cpp) runs at 60 Hz and calls step() whenever a physics step is due
// (fixed timestep with an accumulator), as game engines do. Nothing here does I/O.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <deque>
#include <random>
#include <string>

#include "value.hpp"

namespace ref {

struct ApplyResult {
    bool ok = true;
    Value value;
    std::string code;     // error code when !ok (cooldown, ...)
    std::string message;  // error text when !ok
};

// ---- argument validation against a tool's JSON schema (the subset our tools use) ----------------------

inline const Value* find_tool(const Value& tools, const std::string& name) {
    for (const auto& t : tools.arr) {
        const Value* fn = t.get("function");
        if (fn && fn->str_or("name", "") == name) return fn;
    }
    return nullptr;
}

// Returns "" when legal, else a reason. Checks: known tool, no unknown argument, required present,
// type (string/number/integer/boolean), enum, minimum/maximum.
inline std::string validate_call(const Value& tools, const std::string& name, const Value& args) {
    const Value* fn = find_tool(tools, name);
    if (!fn) return "no tool named '" + name + "'";
    if (args.kind != Value::Map) return "arguments must be a map";
    const Value* params = fn->get("parameters");
    const Value* props = params ? params->get("properties") : nullptr;
    for (const auto& kv : args.map) {
        const Value* schema = props ? props->get(kv.first) : nullptr;
        if (!schema) return name + " has no parameter '" + kv.first + "'";
        const std::string type = schema->str_or("type", "");
        const Value& a = kv.second;
        if (type == "string" && a.kind != Value::Str) return kv.first + " must be a string";
        if (type == "number" && !a.is_number()) return kv.first + " must be a number";
        if (type == "integer" && a.kind != Value::Int) return kv.first + " must be an integer";
        if (type == "boolean" && a.kind != Value::Bool) return kv.first + " must be a boolean";
        if (a.is_number() && !std::isfinite(a.number())) return kv.first + " must be finite";
        if (const Value* en = schema->get("enum")) {
            bool found = false;
            for (const auto& e : en->arr)
                if (e.kind == Value::Str && a.kind == Value::Str && e.s == a.s) found = true;
            if (!found) return kv.first + "='" + a.s + "' is not an allowed value";
        }
        if (const Value* lo = schema->get("minimum"); lo && a.is_number() && a.number() < lo->number())
            return kv.first + " is below its minimum";
        if (const Value* hi = schema->get("maximum"); hi && a.is_number() && a.number() > hi->number())
            return kv.first + " is above its maximum";
    }
    if (const Value* req = params ? params->get("required") : nullptr) {
        for (const auto& r : req->arr)
            if (!args.get(r.s)) return "required argument '" + r.s + "' is missing";
    }
    return "";
}

// A uniformly random legal call of `tools` (a map {name, arguments}): a random tool, each parameter
// drawn from its enum, or uniformly within [minimum, maximum] (0..1 when unbounded), booleans by a coin.
template <typename Rng>
Value random_call(const Value& tools, Rng& rng) {
    std::uniform_int_distribution<size_t> pick_tool(0, tools.arr.size() - 1);
    const Value& fn = *tools.arr[pick_tool(rng)].get("function");
    Value args = Value::object();
    const Value* params = fn.get("parameters");
    const Value* props = params ? params->get("properties") : nullptr;
    if (props) {
        for (const auto& kv : props->map) {
            const Value& schema = kv.second;
            if (const Value* en = schema.get("enum")) {
                std::uniform_int_distribution<size_t> pick(0, en->arr.size() - 1);
                args.set(kv.first, en->arr[pick(rng)]);
            } else if (schema.str_or("type", "") == "boolean") {
                args.set(kv.first, std::uniform_int_distribution<int>(0, 1)(rng) == 1);
            } else {
                const Value* lo = schema.get("minimum");
                const Value* hi = schema.get("maximum");
                std::uniform_real_distribution<double> u(lo ? lo->number() : 0.0, hi ? hi->number() : 1.0);
                args.set(kv.first, std::round(u(rng) * 10) / 10);
            }
        }
    }
    return Value::object({{"name", fn.str_or("name", "")}, {"arguments", args}});
}

inline Value tool(const std::string& name, const std::string& description, Value properties,
                  std::vector<Value> required) {
    Value params = Value::object({{"type", "object"}, {"properties", std::move(properties)},
                                  {"required", Value::array(std::move(required))}});
    return Value::object({{"type", "function"},
                          {"function", Value::object({{"name", name}, {"description", description},
                                                      {"parameters", std::move(params)}})}});
}

inline Value enum_schema(std::vector<Value> values, const std::string& description) {
    Value v = Value::object({{"type", "string"}, {"enum", Value::array(std::move(values))}});
    if (!description.empty()) v.set("description", description);
    return v;
}

// Python-compatible number text: "+0.012" with an explicit sign, no "-0.000".
inline std::string signed_fixed(double x, int precision) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%+.*f", precision, x);
    std::string s(buf);
    bool all_zero = true;
    for (size_t k = 1; k < s.size(); ++k)
        if (s[k] != '0' && s[k] != '.') all_zero = false;
    if (all_zero) s[0] = '+';
    return s;
}

class Game {
public:
    virtual ~Game() = default;
    virtual std::string name() const = 0;
    virtual std::string description() const = 0;
    virtual double physics_dt() const = 0;  // seconds per physics step
    virtual const Value& tools() const = 0;
    virtual Value default_call() const = 0;
    virtual void reset(uint64_t seed) = 0;
    // Apply one validated call at the coming physics step (before it runs).
    virtual ApplyResult apply(const std::string& name, const Value& args) = 0;
    // One physics step; returns the reward of that step.
    virtual double step() = 0;
    // True (with a reason) when the episode is over after the last step.
    virtual bool finished(std::string& reason) const = 0;
    virtual int steps() const = 0;
    virtual std::string obs_text() const = 0;
    virtual Value obs_fields() const = 0;  // hello.observation.fields
    virtual Value obs_values() const = 0;  // obs.values (same names)
    virtual std::string render_ascii() const = 0;
    // The gymnasium id of the same game (same tools, same observation text), or "" (hello.game).
    virtual std::string gym_id() const { return ""; }
    // The engine's own AI (--ai NAME): the call it takes on the state the observation shows now, as a
    // map {name, arguments}; nil when this game has no AI of that name. Reads only what the text shows.
    virtual Value ai_call(const std::string& ai) const = 0;
    virtual std::string ai_names() const = 0;  // the --ai names this game knows, for errors
};

// ---- arena ---------------------------------------------------------------------------------------------

class Arena final : public Game {
public:
    static constexpr double kSize = 10.0, kDt = 0.05, kRange = 4.0, kLife = 3.0, kTargetSpeed = 1.0;
    static constexpr int kMaxSteps = 300, kFireCooldown = 5, kDashCooldown = 20;

    Arena() {
        const std::vector<Value> dirs = {"N", "NE", "E", "SE", "S", "SW", "W", "NW"};
        tools_ = Value::array({
            tool("wait", "Do nothing this step.", Value::object(), {}),
            tool("move", "Step in a direction (walk 1.5 or run 4 units/s).",
                 Value::object({{"direction", enum_schema(dirs, "compass direction, N is up")},
                                {"speed", enum_schema({"walk", "run"}, "walk or run")}}),
                 {"direction", "speed"}),
            tool("aim", "Turn the gun to a compass direction.",
                 Value::object({{"direction", enum_schema(dirs, "compass direction to aim at")}}), {"direction"}),
            tool("fire", "Shoot along the aim (range 4, cooldown 0.25 s).", Value::object(), {}),
            tool("dash", "Jump a distance in a direction (cooldown 1 s).",
                 Value::object({{"direction", enum_schema(dirs, "compass direction to dash to")},
                                {"distance", Value::object({{"type", "number"}, {"minimum", 1}, {"maximum", 3},
                                                            {"description", "units"}})}}),
                 {"direction", "distance"}),
        });
    }
    std::string name() const override { return "arena"; }
    std::string description() const override {
        return "tgt: compass bearing of the target, d: its distance (units), aim: gun direction, "
               "cd/dcd: fire/dash cooldown (0.05 s steps), tl: target time left (s)";
    }
    double physics_dt() const override { return kDt; }
    const Value& tools() const override { return tools_; }
    Value default_call() const override { return Value::object({{"name", "wait"}, {"arguments", Value::object()}}); }

    void reset(uint64_t seed) override {
        rng_.seed(seed);
        x_ = y_ = kSize / 2;
        aim_ = cd_ = dcd_ = 0;
        steps_ = 0;
        moving_ = false;
        oneshot_ = false;
        spawn_target();
    }

    ApplyResult apply(const std::string& name, const Value& args) override {
        ApplyResult r;
        const int dir = args.get("direction") ? dir_index(args.get("direction")->s) : 0;
        if (name == "move") {
            moving_ = true;
            move_dir_ = dir;
            move_speed_ = args.get("speed")->s == "run" ? 4.0 : 1.5;
            r.value = Value::object({{"moving", args.get("direction")->s}});
        } else if (name == "wait") {
            moving_ = false;
            oneshot_ = true;
        } else if (name == "aim") {
            moving_ = false;
            oneshot_ = true;
            aim_ = dir;
            r.value = Value::object({{"aim", args.get("direction")->s}});
        } else if (name == "fire") {
            moving_ = false;
            oneshot_ = true;
            if (cd_ > 0) return error("cooldown", "fire is cooling down: " + std::to_string(cd_) + " steps left");
            cd_ = kFireCooldown;
            fired_ = true;
            const double dx = tx_ - x_, dy = ty_ - y_;
            const bool hit = std::hypot(dx, dy) <= kRange + 0.05 && sector(dx, dy) == aim_;
            if (hit) {
                pending_reward_ += 1.0 + tleft_ * kDt / kLife;
                spawn_target();
            }
            r.value = Value::object({{"hit", hit}});
        } else if (name == "dash") {
            moving_ = false;
            oneshot_ = true;
            if (dcd_ > 0) return error("cooldown", "dash is cooling down: " + std::to_string(dcd_) + " steps left");
            move(dir, std::clamp(args.get("distance")->number(), 1.0, 3.0));
            dcd_ = kDashCooldown;
            dashed_ = true;
            r.value = Value::object({{"x", x_}, {"y", y_}});
        }
        return r;
    }

    double step() override {
        if (moving_ && !oneshot_) move(move_dir_, move_speed_ * kDt);
        if (!fired_) cd_ = std::max(0, cd_ - 1);
        if (!dashed_) dcd_ = std::max(0, dcd_ - 1);
        fired_ = dashed_ = oneshot_ = false;
        double reward = pending_reward_;
        pending_reward_ = 0.0;
        // the target drifts and bounces
        tx_ += tvx_ * kDt;
        ty_ += tvy_ * kDt;
        if (tx_ < 0.5 || tx_ > kSize - 0.5) { tvx_ = -tvx_; tx_ = std::clamp(tx_, 0.5, kSize - 0.5); }
        if (ty_ < 0.5 || ty_ > kSize - 0.5) { tvy_ = -tvy_; ty_ = std::clamp(ty_, 0.5, kSize - 0.5); }
        if (--tleft_ <= 0) {
            reward -= 0.5;
            spawn_target();
        }
        ++steps_;
        return reward;
    }
    bool finished(std::string& reason) const override {
        if (steps_ >= kMaxSteps) { reason = "time"; return true; }
        return false;
    }
    int steps() const override { return steps_; }

    std::string obs_text() const override {
        const double dx = tx_ - x_, dy = ty_ - y_;
        char buf[128];
        std::snprintf(buf, sizeof buf, "tgt=%s d=%.1f aim=%s cd=%d dcd=%d tl=%.1f", kDirs[sector(dx, dy)],
                      std::round(std::hypot(dx, dy) * 10) / 10, kDirs[aim_], cd_, dcd_,
                      std::round(tleft_ * kDt * 10) / 10);
        return buf;
    }
    Value obs_fields() const override {
        auto f = [](const char* n, const char* unit, const char* d, int p) {
            return Value::object({{"name", n}, {"unit", unit}, {"description", d}, {"precision", p}});
        };
        return Value::array({f("x", "units", "agent x", 2), f("y", "units", "agent y", 2),
                             f("dx", "units", "target x - agent x", 2), f("dy", "units", "target y - agent y", 2),
                             f("aim", "", "gun direction", 0), f("cd", "steps", "fire cooldown", 0),
                             f("dcd", "steps", "dash cooldown", 0), f("tl", "s", "target time left", 2)});
    }
    Value obs_values() const override {
        return Value::object({{"x", x_}, {"y", y_}, {"dx", tx_ - x_}, {"dy", ty_ - y_}, {"aim", kDirs[aim_]},
                              {"cd", cd_}, {"dcd", dcd_}, {"tl", tleft_ * kDt}});
    }
    std::string gym_id() const override { return "tickcall/Arena-v0"; }
    std::string ai_names() const override { return "chase"; }
    // "chase": tickcall's ArenaExpert (envs/experts.py), on the values the text shows (bearing, distance
    // rounded to 0.1, aim, cooldowns): aim at the target's sector, close in (dash when far and ready,
    // else run), fire when ready, else wait.
    Value ai_call(const std::string& ai) const override {
        if (ai != "chase") return Value();
        const double dx = tx_ - x_, dy = ty_ - y_;
        const char* tgt = kDirs[sector(dx, dy)];
        const double d = std::round(std::hypot(dx, dy) * 10) / 10;
        auto call = [](const char* name, Value args) {
            return Value::object({{"name", name}, {"arguments", std::move(args)}});
        };
        if (sector(dx, dy) != aim_) return call("aim", Value::object({{"direction", tgt}}));
        const double gap = d - kRange;
        if (gap > 0) {
            if (dcd_ == 0) {
                const int64_t dist = gap > 2 ? 3 : gap > 1 ? 2 : 1;
                return call("dash", Value::object({{"direction", tgt}, {"distance", dist}}));
            }
            return call("move", Value::object({{"direction", tgt}, {"speed", "run"}}));
        }
        if (cd_ == 0) return call("fire", Value::object());
        return call("wait", Value::object());
    }
    std::string render_ascii() const override {
        const int n = 21;
        std::string out;
        for (int row = n - 1; row >= 0; --row) {
            for (int col = 0; col < n; ++col) {
                const double cx = (col + 0.5) * kSize / n, cy = (row + 0.5) * kSize / n;
                char c = '.';
                if (std::hypot(cx - tx_, cy - ty_) < 0.35) c = 'T';
                if (std::hypot(cx - x_, cy - y_) < 0.35) c = 'A';
                out += c;
            }
            out += '\n';
        }
        char buf[96];
        std::snprintf(buf, sizeof buf, "step %d aim %s\n", steps_, kDirs[aim_]);
        return out + buf;
    }

private:
    static constexpr const char* kDirs[8] = {"N", "NE", "E", "SE", "S", "SW", "W", "NW"};
    static int dir_index(const std::string& d) {
        for (int k = 0; k < 8; ++k)
            if (d == kDirs[k]) return k;
        return 0;
    }
    static int sector(double dx, double dy) {  // 0..7, N = 0, clockwise; rounds half to even like Python
        const int k = static_cast<int>(std::nearbyint(std::atan2(dx, dy) / (M_PI / 4)));
        return ((k % 8) + 8) % 8;
    }
    static ApplyResult error(const std::string& code, const std::string& message) {
        ApplyResult r;
        r.ok = false;
        r.code = code;
        r.message = message;
        return r;
    }
    void move(int dir, double dist) {
        x_ = std::clamp(x_ + dist * std::sin(dir * M_PI / 4), 0.0, kSize);
        y_ = std::clamp(y_ + dist * std::cos(dir * M_PI / 4), 0.0, kSize);
    }
    void spawn_target() {
        std::uniform_real_distribution<double> pos(0.5, kSize - 0.5), ang(0.0, 2 * M_PI);
        for (int k = 0; k < 100; ++k) {
            tx_ = pos(rng_);
            ty_ = pos(rng_);
            if (std::hypot(tx_ - x_, ty_ - y_) >= 1.5) break;
        }
        const double a = ang(rng_);
        tvx_ = kTargetSpeed * std::cos(a);
        tvy_ = kTargetSpeed * std::sin(a);
        tleft_ = static_cast<int>(std::lround(kLife / kDt));
    }

    Value tools_;
    std::mt19937_64 rng_;
    double x_ = 5, y_ = 5, tx_ = 5, ty_ = 9, tvx_ = 0, tvy_ = 0, move_speed_ = 1.5, pending_reward_ = 0;
    int aim_ = 0, cd_ = 0, dcd_ = 0, tleft_ = 0, steps_ = 0, move_dir_ = 0;
    bool moving_ = false, oneshot_ = false, fired_ = false, dashed_ = false;
};

// ---- cartpole ------------------------------------------------------------------------------------------

class CartPole final : public Game {
public:
    CartPole() {
        tools_ = Value::array({tool("push", "Push the cart to the left or to the right.",
                                    Value::object({{"direction", enum_schema({"left", "right"}, "")}}),
                                    {"direction"})});
    }
    std::string name() const override { return "cartpole"; }
    std::string description() const override {
        return "x: cart position (m), v: cart velocity (m/s), a: pole angle (rad), w: pole angular velocity (rad/s)";
    }
    double physics_dt() const override { return 0.02; }
    const Value& tools() const override { return tools_; }
    Value default_call() const override {
        return Value::object({{"name", "push"}, {"arguments", Value::object({{"direction", "left"}})}});
    }
    void reset(uint64_t seed) override {
        rng_.seed(seed);
        std::uniform_real_distribution<double> u(-0.05, 0.05);
        x_ = u(rng_);
        v_ = u(rng_);
        a_ = u(rng_);
        w_ = u(rng_);
        steps_ = 0;
        force_ = -10.0;
    }
    ApplyResult apply(const std::string&, const Value& args) override {
        force_ = args.get("direction")->s == "right" ? 10.0 : -10.0;
        ApplyResult r;
        r.value = Value::object({{"force", force_}});
        return r;
    }
    double step() override {  // gymnasium CartPole-v1, euler integrator
        const double g = 9.8, mc = 1.0, mp = 0.1, total = mc + mp, l = 0.5, pml = mp * l, tau = 0.02;
        const double c = std::cos(a_), s = std::sin(a_);
        const double temp = (force_ + pml * w_ * w_ * s) / total;
        const double aacc = (g * s - c * temp) / (l * (4.0 / 3.0 - mp * c * c / total));
        const double xacc = temp - pml * aacc * c / total;
        x_ += tau * v_;
        v_ += tau * xacc;
        a_ += tau * w_;
        w_ += tau * aacc;
        ++steps_;
        return 1.0;
    }
    bool finished(std::string& reason) const override {
        if (std::fabs(x_) > 2.4 || std::fabs(a_) > 12 * 2 * M_PI / 360) { reason = "fell"; return true; }
        if (steps_ >= 500) { reason = "time"; return true; }
        return false;
    }
    int steps() const override { return steps_; }
    std::string obs_text() const override {
        return "x=" + signed_fixed(x_, 3) + " v=" + signed_fixed(v_, 3) + " a=" + signed_fixed(a_, 3) +
               " w=" + signed_fixed(w_, 3);
    }
    Value obs_fields() const override {
        auto f = [](const char* n, const char* unit, const char* d) {
            return Value::object({{"name", n}, {"unit", unit}, {"description", d}, {"precision", 3}});
        };
        return Value::array({f("x", "m", "cart position"), f("v", "m/s", "cart velocity"),
                             f("a", "rad", "pole angle"), f("w", "rad/s", "pole angular velocity")});
    }
    Value obs_values() const override { return Value::object({{"x", x_}, {"v", v_}, {"a", a_}, {"w", w_}}); }
    std::string ai_names() const override { return "balance"; }
    // "balance": tickcall's CartPole expert (envs/experts.py): push right when 0.05 x + 0.3 v + 3 a +
    // 0.6 w > 0 (state feedback on the values the observation carries).
    Value ai_call(const std::string& ai) const override {
        if (ai != "balance") return Value();
        const bool right = 0.05 * x_ + 0.3 * v_ + 3.0 * a_ + 0.6 * w_ > 0;
        return Value::object({{"name", "push"}, {"arguments", Value::object({{"direction", right ? "right" : "left"}})}});
    }
    std::string render_ascii() const override {
        std::string line(49, '-');
        const int pos = std::clamp(static_cast<int>(std::lround((x_ + 2.4) / 4.8 * 48)), 0, 48);
        line[pos] = '#';
        char buf[96];
        std::snprintf(buf, sizeof buf, "\nstep %d pole %+.1f deg\n", steps_, a_ * 180 / M_PI);
        return line + buf;
    }

private:
    Value tools_;
    std::mt19937_64 rng_;
    double x_ = 0, v_ = 0, a_ = 0, w_ = 0, force_ = -10;
    int steps_ = 0;
};

}  // namespace ref
