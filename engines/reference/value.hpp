// A small dynamic value (nil, bool, int, float, string, array, map) with msgpack and JSON I/O.
//
// The reference engine builds every protocol message as a Value and packs it with msgpack-c; it
// reads incoming messages into a Value (maps keep their key order). Messages are small (< 1 KiB),
// so a tree is simpler than streaming and costs nothing that matters at 60 Hz.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <msgpack.hpp>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace ref {

struct Value {
    enum Kind { Nil, Bool, Int, Float, Str, Arr, Map };
    Kind kind = Nil;
    bool b = false;
    int64_t i = 0;
    double f = 0.0;
    std::string s;
    std::vector<Value> arr;
    std::vector<std::pair<std::string, Value>> map;

    Value() = default;
    Value(bool v) : kind(Bool), b(v) {}                       // NOLINT: implicit on purpose
    Value(int v) : kind(Int), i(v) {}                         // NOLINT
    Value(int64_t v) : kind(Int), i(v) {}                     // NOLINT
    Value(uint64_t v) : kind(Int), i(static_cast<int64_t>(v)) {}  // NOLINT
    Value(double v) : kind(Float), f(v) {}                    // NOLINT
    Value(const char* v) : kind(Str), s(v) {}                 // NOLINT
    Value(std::string v) : kind(Str), s(std::move(v)) {}      // NOLINT

    static Value array(std::vector<Value> items = {}) {
        Value v;
        v.kind = Arr;
        v.arr = std::move(items);
        return v;
    }
    static Value object(std::initializer_list<std::pair<std::string, Value>> items = {}) {
        Value v;
        v.kind = Map;
        v.map.assign(items.begin(), items.end());
        return v;
    }

    Value& set(const std::string& key, Value value) {
        for (auto& kv : map) {
            if (kv.first == key) {
                kv.second = std::move(value);
                return *this;
            }
        }
        map.emplace_back(key, std::move(value));
        return *this;
    }
    const Value* get(const std::string& key) const {
        if (kind != Map) return nullptr;
        for (const auto& kv : map)
            if (kv.first == key) return &kv.second;
        return nullptr;
    }
    bool is_number() const { return kind == Int || kind == Float; }
    double number() const { return kind == Int ? static_cast<double>(i) : f; }
    std::string str_or(const std::string& key, const std::string& dflt) const {
        const Value* v = get(key);
        return v && v->kind == Str ? v->s : dflt;
    }
    int64_t int_or(const std::string& key, int64_t dflt) const {
        const Value* v = get(key);
        return v && v->kind == Int ? v->i : dflt;
    }
};

// ---- msgpack -------------------------------------------------------------------------------------

// msgpack-c >= 4 packs a double with an integral value (5.0) as an int; here a float stays a
// float on the wire: 0xcb + the IEEE-754 bits, big-endian, written straight into the buffer.
inline void pack_float64(msgpack::sbuffer& buf, double d) {
    uint64_t bits;
    std::memcpy(&bits, &d, sizeof bits);
    char out[9];
    out[0] = static_cast<char>(0xcb);
    for (int k = 0; k < 8; ++k) out[1 + k] = static_cast<char>((bits >> (56 - 8 * k)) & 0xff);
    buf.write(out, sizeof out);
}

inline void pack_value(msgpack::sbuffer& buf, msgpack::packer<msgpack::sbuffer>& pk, const Value& v) {
    switch (v.kind) {
        case Value::Nil: pk.pack_nil(); break;
        case Value::Bool: v.b ? pk.pack_true() : pk.pack_false(); break;
        case Value::Int: pk.pack_int64(v.i); break;
        case Value::Float: pack_float64(buf, v.f); break;
        case Value::Str: pk.pack(v.s); break;
        case Value::Arr:
            pk.pack_array(static_cast<uint32_t>(v.arr.size()));
            for (const auto& x : v.arr) pack_value(buf, pk, x);
            break;
        case Value::Map:
            pk.pack_map(static_cast<uint32_t>(v.map.size()));
            for (const auto& kv : v.map) {
                pk.pack(kv.first);
                pack_value(buf, pk, kv.second);
            }
            break;
    }
}

inline std::string pack(const Value& v) {
    msgpack::sbuffer buf;
    msgpack::packer<msgpack::sbuffer> pk(&buf);
    pack_value(buf, pk, v);
    return std::string(buf.data(), buf.size());
}

inline Value from_object(const msgpack::object& o, int depth = 0) {
    if (depth > 32) throw std::runtime_error("message nested too deeply");
    Value v;
    switch (o.type) {
        case msgpack::type::NIL: break;
        case msgpack::type::BOOLEAN: v = Value(o.via.boolean); break;
        case msgpack::type::POSITIVE_INTEGER: v = Value(static_cast<uint64_t>(o.via.u64)); break;
        case msgpack::type::NEGATIVE_INTEGER: v = Value(static_cast<int64_t>(o.via.i64)); break;
        case msgpack::type::FLOAT32:
        case msgpack::type::FLOAT64: v = Value(o.via.f64); break;
        case msgpack::type::STR: v = Value(std::string(o.via.str.ptr, o.via.str.size)); break;
        case msgpack::type::BIN: v = Value(std::string(o.via.bin.ptr, o.via.bin.size)); break;
        case msgpack::type::ARRAY:
            v = Value::array();
            for (uint32_t k = 0; k < o.via.array.size; ++k) v.arr.push_back(from_object(o.via.array.ptr[k], depth + 1));
            break;
        case msgpack::type::MAP:
            v = Value::object();
            for (uint32_t k = 0; k < o.via.map.size; ++k) {
                const auto& kv = o.via.map.ptr[k];
                if (kv.key.type != msgpack::type::STR) throw std::runtime_error("map key is not a string");
                v.map.emplace_back(std::string(kv.key.via.str.ptr, kv.key.via.str.size), from_object(kv.val, depth + 1));
            }
            break;
        default: throw std::runtime_error("unsupported msgpack type");
    }
    return v;
}

// Decode one message with limits from its own size: every array element, map pair and string byte
// takes at least one byte of input, so a header that claims more (a 5-byte array32 header claiming
// 4 G elements would make msgpack-c allocate 64 GB up front) is refused before any allocation.
inline Value unpack(const char* data, size_t size) {
    const std::size_t n = std::min<std::size_t>(size, 0xffffffffu);
    const msgpack::unpack_limit limit(n, n / 2, n, n, n, 32);  // array, map, str, bin, ext, depth
    std::size_t off = 0;
    msgpack::object_handle oh = msgpack::unpack(data, size, off, nullptr, nullptr, limit);
    if (off != size) throw std::runtime_error("trailing bytes after the message");
    return from_object(oh.get());
}

// ---- JSON (for the engine's own log file) ------------------------------------------------------------

inline void json_escape(std::string& out, const std::string& s) {
    out += '"';
    for (unsigned char c : s) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (c < 0x20) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04x", c);
                    out += buf;
                } else {
                    out += static_cast<char>(c);
                }
        }
    }
    out += '"';
}

inline void to_json(std::string& out, const Value& v) {
    switch (v.kind) {
        case Value::Nil: out += "null"; break;
        case Value::Bool: out += v.b ? "true" : "false"; break;
        case Value::Int: out += std::to_string(v.i); break;
        case Value::Float: {
            if (!std::isfinite(v.f)) { out += "null"; break; }
            char buf[32];
            std::snprintf(buf, sizeof buf, "%.15g", v.f);
            out += buf;
            break;
        }
        case Value::Str: json_escape(out, v.s); break;
        case Value::Arr:
            out += '[';
            for (size_t k = 0; k < v.arr.size(); ++k) {
                if (k) out += ',';
                to_json(out, v.arr[k]);
            }
            out += ']';
            break;
        case Value::Map:
            out += '{';
            for (size_t k = 0; k < v.map.size(); ++k) {
                if (k) out += ',';
                json_escape(out, v.map[k].first);
                out += ':';
                to_json(out, v.map[k].second);
            }
            out += '}';
            break;
    }
}

inline std::string to_json(const Value& v) {
    std::string out;
    to_json(out, v);
    return out;
}

}  // namespace ref
