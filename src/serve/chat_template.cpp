#include "serve/chat_template.h"

#include <algorithm>
#include <cctype>
#include <functional>
#include <map>
#include <vector>

namespace peft::serve {

using json = nlohmann::json;

namespace {

[[noreturn]] void error(const std::string& m) { throw ChatTemplateError(m); }

json undefined() { return json(json::value_t::discarded); }
bool is_undef(const json& v) { return v.is_discarded(); }

bool truthy(const json& v) {
  if (is_undef(v) || v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0;
  if (v.is_string()) return !v.get_ref<const std::string&>().empty();
  if (v.is_array() || v.is_object()) return !v.empty();
  return false;
}

std::string to_text(const json& v) {
  if (is_undef(v)) return "";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "None";
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
  return v.dump();
}

// ---- expression tokens ----------------------------------------------------------------------

struct Tok {
  enum Kind { Name, Num, Str, Op, End } kind;
  std::string s;
  json num;
};

// A number literal (digits, at most one '.'). Python's integers are unbounded; ours are 64-bit,
// and a literal outside that (or a float literal that overflows a double) is refused.
json number_literal(const std::string& n, bool dot) {
  try {
    return dot ? json(std::stod(n)) : json(std::stoll(n));
  } catch (const std::out_of_range&) {
    error("number literal " + (n.size() > 24 ? n.substr(0, 24) + "..." : n) + " is out of range (" +
          (dot ? "a double" : "a 64-bit integer") + ")");
  }
}

std::vector<Tok> lex(const std::string& src) {
  std::vector<Tok> out;
  size_t i = 0;
  while (i < src.size()) {
    char c = src[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
    } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < src.size() && (std::isalnum(static_cast<unsigned char>(src[j])) || src[j] == '_')) ++j;
      out.push_back({Tok::Name, src.substr(i, j - i), {}});
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      bool dot = false;
      while (j < src.size() && (std::isdigit(static_cast<unsigned char>(src[j])) || (src[j] == '.' && !dot))) dot |= src[j++] == '.';
      std::string n = src.substr(i, j - i);
      out.push_back({Tok::Num, n, number_literal(n, dot)});
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string s;
      size_t j = i + 1;
      for (; j < src.size() && src[j] != c; ++j) {
        if (src[j] == '\\' && j + 1 < src.size()) {
          char e = src[++j];
          s += e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
        } else {
          s += src[j];
        }
      }
      if (j >= src.size()) error("unterminated string literal in: " + src);
      out.push_back({Tok::Str, s, {}});
      i = j + 1;
    } else {
      static const char* two[] = {"==", "!=", "<=", ">=", "//", "**"};
      std::string op(1, c);
      for (auto* t : two)
        if (src.compare(i, 2, t) == 0) op = t;
      if (std::string("=!<>+-*/%~()[]{},.:|").find(c) == std::string::npos) error(std::string("unexpected character '") + c + "'");
      out.push_back({Tok::Op, op, {}});
      i += op.size();
    }
  }
  out.push_back({Tok::End, "", {}});
  return out;
}

// ---- expressions ----------------------------------------------------------------------------

struct Expr;
using ExprP = std::shared_ptr<Expr>;
struct Expr {
  enum Kind { Lit, Name, Attr, Index, Slice, Call, Filter, Unary, Binary, Test, Cond, List } kind;
  std::string s;  // name, attribute, operator, filter or test
  json lit;
  std::vector<ExprP> a;  // operands / arguments
  std::vector<std::pair<std::string, ExprP>> kw;
  bool neg = false;
};

ExprP mk(Expr::Kind k, std::string s = "", std::vector<ExprP> a = {}) {
  auto e = std::make_shared<Expr>();
  e->kind = k;
  e->s = std::move(s);
  e->a = std::move(a);
  return e;
}

class Parser {
 public:
  explicit Parser(const std::string& src) : t_(lex(src)), src_(src) {}
  ExprP expr() { return cond(); }
  bool at_end() const { return t_[p_].kind == Tok::End; }
  const Tok& peek() const { return t_[p_]; }
  bool op(const char* o) {
    if (t_[p_].kind == Tok::Op && t_[p_].s == o) return ++p_, true;
    return false;
  }
  bool kw(const char* k) {
    if (t_[p_].kind == Tok::Name && t_[p_].s == k) return ++p_, true;
    return false;
  }
  void expect(const char* o) {
    if (!op(o)) error(std::string("expected '") + o + "' in: " + src_);
  }
  std::string name() {
    if (t_[p_].kind != Tok::Name) error("expected a name in: " + src_);
    return t_[p_++].s;
  }
  void done() {
    if (!at_end()) error("unexpected '" + t_[p_].s + "' in: " + src_);
  }

 private:
  ExprP cond() {
    auto e = or_();
    if (kw("if")) {
      auto c = or_();
      ExprP other = kw("else") ? cond() : nullptr;
      auto r = mk(Expr::Cond, "", {e, c});
      if (other) r->a.push_back(other);
      return r;
    }
    return e;
  }
  ExprP or_() {
    auto e = and_();
    while (kw("or")) e = mk(Expr::Binary, "or", {e, and_()});
    return e;
  }
  ExprP and_() {
    auto e = not_();
    while (kw("and")) e = mk(Expr::Binary, "and", {e, not_()});
    return e;
  }
  ExprP not_() {
    if (kw("not")) return mk(Expr::Unary, "not", {not_()});
    return cmp();
  }
  ExprP cmp() {
    auto e = add();
    while (true) {
      std::string o;
      for (const char* c : {"==", "!=", "<=", ">=", "<", ">"})
        if (op(c)) {
          o = c;
          break;
        }
      if (!o.empty()) {
        e = mk(Expr::Binary, o, {e, add()});
      } else if (kw("in")) {
        e = mk(Expr::Binary, "in", {e, add()});
      } else if (peek().kind == Tok::Name && peek().s == "not" && t_[p_ + 1].kind == Tok::Name && t_[p_ + 1].s == "in") {
        p_ += 2;
        e = mk(Expr::Unary, "not", {mk(Expr::Binary, "in", {e, add()})});
      } else if (kw("is")) {
        auto t = mk(Expr::Test, "", {e});
        t->neg = kw("not");
        t->s = name();
        e = t;
      } else {
        return e;
      }
    }
  }
  ExprP add() {
    auto e = mul();
    while (true) {
      if (op("+")) e = mk(Expr::Binary, "+", {e, mul()});
      else if (op("-")) e = mk(Expr::Binary, "-", {e, mul()});
      else if (op("~")) e = mk(Expr::Binary, "~", {e, mul()});
      else return e;
    }
  }
  ExprP mul() {
    auto e = unary();
    while (true) {
      if (op("*")) e = mk(Expr::Binary, "*", {e, unary()});
      else if (op("//")) e = mk(Expr::Binary, "//", {e, unary()});
      else if (op("/")) e = mk(Expr::Binary, "/", {e, unary()});
      else if (op("%")) e = mk(Expr::Binary, "%", {e, unary()});
      else return e;
    }
  }
  ExprP unary() {
    if (op("-")) return mk(Expr::Unary, "-", {unary()});
    return filtered();
  }
  ExprP filtered() {
    auto e = postfix();
    while (op("|")) {
      auto f = mk(Expr::Filter, name(), {e});
      if (op("(")) args(f.get());
      e = f;
    }
    return e;
  }
  void args(Expr* call) {  // after '('
    if (op(")")) return;
    do {
      if (peek().kind == Tok::Name && t_[p_ + 1].kind == Tok::Op && t_[p_ + 1].s == "=") {
        std::string k = name();
        expect("=");
        call->kw.push_back({k, expr()});
      } else {
        call->a.push_back(expr());
      }
    } while (op(","));
    expect(")");
  }
  ExprP postfix() {
    auto e = primary();
    while (true) {
      if (op(".")) {
        auto a = mk(Expr::Attr, name(), {e});
        e = a;
      } else if (op("[")) {
        ExprP lo, hi;
        if (!(peek().kind == Tok::Op && peek().s == ":")) lo = expr();
        if (op(":")) {
          if (!(peek().kind == Tok::Op && peek().s == "]")) hi = expr();
          expect("]");
          auto s = mk(Expr::Slice, "", {e, lo, hi});
          e = s;
        } else {
          expect("]");
          e = mk(Expr::Index, "", {e, lo});
        }
      } else if (op("(")) {
        auto c = mk(Expr::Call, "", {e});
        args(c.get());
        e = c;
      } else {
        return e;
      }
    }
  }
  ExprP primary() {
    const Tok& t = t_[p_];
    if (t.kind == Tok::Num) {
      ++p_;
      auto e = mk(Expr::Lit);
      e->lit = t.num;
      return e;
    }
    if (t.kind == Tok::Str) {
      std::string s;
      while (t_[p_].kind == Tok::Str) s += t_[p_++].s;  // adjacent literals concatenate
      auto e = mk(Expr::Lit);
      e->lit = s;
      return e;
    }
    if (t.kind == Tok::Name) {
      ++p_;
      auto e = mk(Expr::Lit);
      if (t.s == "true" || t.s == "True") e->lit = true;
      else if (t.s == "false" || t.s == "False") e->lit = false;
      else if (t.s == "none" || t.s == "None") e->lit = nullptr;
      else return mk(Expr::Name, t.s);
      return e;
    }
    if (op("(")) {
      auto e = expr();
      expect(")");
      return e;
    }
    if (op("[")) {
      auto l = mk(Expr::List);
      if (!op("]")) {
        do l->a.push_back(expr());
        while (op(","));
        expect("]");
      }
      return l;
    }
    if (t.kind == Tok::Op && t.s == "{") error("dict literals are not supported");
    error("unexpected '" + t.s + "' in: " + src_);
  }

  std::vector<Tok> t_;
  size_t p_ = 0;
  std::string src_;
};

}  // namespace

// ---- statements -----------------------------------------------------------------------------

struct ChatTemplate::Node {
  enum Kind { Text, Out, If, For, Set, Body } kind = Body;
  std::string text;
  ExprP e;                                  // Out, Set value, For iterable
  std::vector<std::pair<ExprP, std::shared_ptr<Node>>> branches;  // If
  std::vector<std::string> vars;            // For loop variables, Set target (name[, attr])
  std::vector<std::shared_ptr<Node>> body;  // Body, For body
  std::shared_ptr<Node> other;              // If else, For else
};

namespace {

using Node = ChatTemplate::Node;
using NodeP = std::shared_ptr<Node>;

struct Piece {
  enum Kind { Text, Expr, Stmt } kind;
  std::string s;
};

// Splits into text, {{ }} and {% %} pieces with jinja2's whitespace rules (trim_blocks,
// lstrip_blocks and the '-' markers); comments are dropped.
std::vector<Piece> split(const std::string& src) {
  std::vector<Piece> out;
  size_t i = 0;
  bool trim_next = false, trim_newline = false;
  while (i <= src.size()) {
    size_t j = src.find('{', i);
    while (j != std::string::npos && j + 1 < src.size() && std::string("{%#").find(src[j + 1]) == std::string::npos)
      j = src.find('{', j + 1);
    if (j != std::string::npos && j + 1 >= src.size()) j = std::string::npos;
    const std::string raw = src.substr(i, j == std::string::npos ? std::string::npos : j - i);
    std::string text = raw;
    if (trim_newline && !text.empty() && text[0] == '\n') text.erase(0, 1);
    if (trim_next) {
      size_t b = text.find_first_not_of(" \t\r\n");
      text.erase(0, b == std::string::npos ? text.size() : b);
    }
    trim_next = trim_newline = false;
    if (j == std::string::npos) {
      if (!text.empty()) out.push_back({Piece::Text, text});
      break;
    }
    const char kind = src[j + 1];
    const std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    size_t k = src.find(close, j + 2);
    if (k == std::string::npos) error(std::string("unclosed '{") + kind + "'");
    std::string inner = src.substr(j + 2, k - j - 2);
    bool strip_before = !inner.empty() && inner[0] == '-';
    bool keep_before = !inner.empty() && inner[0] == '+';
    if (strip_before || keep_before) inner.erase(0, 1);
    // Checked after the leading marker is gone: in "{%-%}" the one '-' is the opening marker only.
    bool strip_after = !inner.empty() && inner.back() == '-';
    if (strip_after) inner.pop_back();
    if (strip_before) {
      size_t e = text.find_last_not_of(" \t\r\n");
      text.erase(e == std::string::npos ? 0 : e + 1);
    } else if (kind != '{' && !keep_before) {  // lstrip_blocks: spaces before a block tag on its line
      size_t nl = raw.find_last_of('\n');
      if (nl != std::string::npos || i == 0) {
        size_t start = nl == std::string::npos ? 0 : nl + 1;
        if (raw.find_first_not_of(" \t", start) == std::string::npos)
          text.erase(text.size() - std::min(raw.size() - start, text.size()));
      }
    }
    if (!text.empty()) out.push_back({Piece::Text, text});
    if (kind == '{') out.push_back({Piece::Expr, inner});
    if (kind == '%') out.push_back({Piece::Stmt, inner});
    trim_next = strip_after;
    trim_newline = kind != '{';  // trim_blocks (comments too)
    i = k + 2;
  }
  return out;
}

class Builder {
 public:
  explicit Builder(std::vector<Piece> p) : p_(std::move(p)) {}
  NodeP parse_body(std::vector<std::string> stop, std::string* ended, Parser** tail) {
    auto body = std::make_shared<Node>();
    while (i_ < p_.size()) {
      auto& pc = p_[i_++];
      if (pc.kind == Piece::Text) {
        auto n = std::make_shared<Node>();
        n->kind = Node::Text;
        n->text = pc.s;
        body->body.push_back(n);
      } else if (pc.kind == Piece::Expr) {
        auto n = std::make_shared<Node>();
        n->kind = Node::Out;
        Parser ps(pc.s);
        n->e = ps.expr();
        ps.done();
        body->body.push_back(n);
      } else {
        auto ps = std::make_shared<Parser>(pc.s);
        std::string w = ps->name();
        for (auto& s : stop)
          if (w == s) {
            *ended = w;
            held_ = ps;
            *tail = ps.get();
            return body;
          }
        body->body.push_back(statement(w, *ps));
      }
    }
    if (!stop.empty()) error("missing {% " + stop.back() + " %}");
    return body;
  }

 private:
  NodeP statement(const std::string& w, Parser& ps) {
    auto n = std::make_shared<Node>();
    std::string ended;
    Parser* tail = nullptr;
    if (w == "if") {
      n->kind = Node::If;
      ExprP c = ps.expr();
      ps.done();
      while (true) {
        auto b = parse_body({"elif", "else", "endif"}, &ended, &tail);
        n->branches.push_back({c, b});
        if (ended == "elif") {
          c = tail->expr();
          tail->done();
          continue;
        }
        if (ended == "else") {
          tail->done();
          n->other = parse_body({"endif"}, &ended, &tail);
        }
        tail->done();
        return n;
      }
    }
    if (w == "for") {
      n->kind = Node::For;
      n->vars.push_back(ps.name());
      while (ps.op(",")) n->vars.push_back(ps.name());
      if (!ps.kw("in")) error("expected 'in' in a for statement");
      n->e = ps.expr();
      if (ps.kw("recursive")) error("recursive for loops are not supported");
      ps.done();
      auto b = parse_body({"else", "endfor"}, &ended, &tail);
      n->body = b->body;
      if (ended == "else") {
        tail->done();
        n->other = parse_body({"endfor"}, &ended, &tail);
      }
      tail->done();
      return n;
    }
    if (w == "set") {
      n->kind = Node::Set;
      n->vars.push_back(ps.name());
      if (ps.op(".")) n->vars.push_back(ps.name());
      if (!ps.op("=")) error("block {% set %} ... {% endset %} is not supported");
      n->e = ps.expr();
      ps.done();
      return n;
    }
    error("the statement {% " + w + " %} is not supported");
  }

  std::vector<Piece> p_;
  size_t i_ = 0;
  std::shared_ptr<Parser> held_;  // keeps the parser of the last end tag alive
};

// ---- evaluation -----------------------------------------------------------------------------

struct Ctx {
  std::vector<json> scopes;  // objects, innermost last
  json* find(const std::string& n) {
    for (auto it = scopes.rbegin(); it != scopes.rend(); ++it)
      if (it->contains(n)) return &(*it)[n];
    return nullptr;
  }
};

json eval(const ExprP& e, Ctx& c);

json call_method(const json& obj, const std::string& m, const std::vector<json>& a) {
  auto arg = [&](size_t i) -> const json& {
    if (i >= a.size()) error("method " + m + "() needs more arguments");
    return a[i];
  };
  if (obj.is_string()) {
    std::string s = obj.get<std::string>();
    const std::string ws = a.empty() ? " \t\r\n" : arg(0).get<std::string>();
    if (m == "strip" || m == "lstrip" || m == "rstrip") {
      size_t b = m == "rstrip" ? 0 : s.find_first_not_of(ws);
      if (b == std::string::npos) return "";
      size_t e = m == "lstrip" ? s.size() : s.find_last_not_of(ws) + 1;
      return s.substr(b, e - b);
    }
    if (m == "upper" || m == "lower") {
      for (auto& ch : s) ch = m == "upper" ? std::toupper(static_cast<unsigned char>(ch)) : std::tolower(static_cast<unsigned char>(ch));
      return s;
    }
    if (m == "title") {
      bool start = true;
      for (auto& ch : s) {
        ch = start ? std::toupper(static_cast<unsigned char>(ch)) : std::tolower(static_cast<unsigned char>(ch));
        start = !std::isalpha(static_cast<unsigned char>(ch));
      }
      return s;
    }
    if (m == "startswith") return s.rfind(arg(0).get<std::string>(), 0) == 0;
    if (m == "endswith") {
      auto t = arg(0).get<std::string>();
      return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
    }
    if (m == "replace") {
      auto from = arg(0).get<std::string>(), to = arg(1).get<std::string>();
      if (from.empty()) return s;
      for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
      return s;
    }
    if (m == "split") {
      json out = json::array();
      if (a.empty()) {
        size_t p = 0;
        while ((p = s.find_first_not_of(" \t\r\n", p)) != std::string::npos) {
          size_t q = s.find_first_of(" \t\r\n", p);
          out.push_back(s.substr(p, q - p));
          p = q;
        }
        return out;
      }
      auto sep = arg(0).get<std::string>();
      if (sep.empty()) error("split(): empty separator");
      size_t p = 0, q;
      while ((q = s.find(sep, p)) != std::string::npos) out.push_back(s.substr(p, q - p)), p = q + sep.size();
      out.push_back(s.substr(p));
      return out;
    }
  }
  if (obj.is_object()) {
    if (m == "get") return obj.contains(arg(0).get<std::string>()) ? obj[arg(0).get<std::string>()] : (a.size() > 1 ? a[1] : json(nullptr));
    if (m == "items" || m == "keys" || m == "values") {
      json out = json::array();
      for (auto& [k, v] : obj.items()) out.push_back(m == "items" ? json::array({k, v}) : m == "keys" ? json(k) : v);
      return out;
    }
  }
  error("method ." + m + "() is not supported on " + std::string(obj.type_name()));
}

json filter(const std::string& f, const json& v, const std::vector<json>& a) {
  if (f == "trim") return call_method(json(to_text(v)), "strip", a);
  if (f == "upper" || f == "lower") return call_method(json(to_text(v)), f, {});
  if (f == "string") return to_text(v);
  if (f == "length" || f == "count") {
    if (v.is_string()) return v.get<std::string>().size();
    if (v.is_array() || v.is_object()) return v.size();
    error("filter " + f + " on " + std::string(v.type_name()));
  }
  if (f == "first" || f == "last") {
    if (!v.is_array() || v.empty()) return undefined();
    return f == "first" ? v.front() : v.back();
  }
  if (f == "tojson") return is_undef(v) ? json("null") : json(v.dump());
  error("the filter '" + f + "' is not supported");
}

json eval(const ExprP& e, Ctx& c) {
  switch (e->kind) {
    case Expr::Lit:
      return e->lit;
    case Expr::Name: {
      json* v = c.find(e->s);
      return v ? *v : undefined();
    }
    case Expr::List: {
      json out = json::array();
      for (auto& x : e->a) out.push_back(eval(x, c));
      return out;
    }
    case Expr::Attr:
    case Expr::Index: {
      json o = eval(e->a[0], c);
      json k = e->kind == Expr::Attr ? json(e->s) : eval(e->a[1], c);
      if (o.is_object() && k.is_string()) return o.contains(k.get<std::string>()) ? o[k.get<std::string>()] : undefined();
      if ((o.is_array() || o.is_string()) && k.is_number_integer()) {
        int64_t n = o.is_array() ? o.size() : o.get<std::string>().size(), i = k.get<int64_t>();
        if (i < 0) i += n;
        if (i < 0 || i >= n) return undefined();
        return o.is_array() ? o[static_cast<size_t>(i)] : json(o.get<std::string>().substr(i, 1));
      }
      return undefined();
    }
    case Expr::Slice: {
      json o = eval(e->a[0], c);
      if (!o.is_array() && !o.is_string()) error("slicing needs a list or a string");
      int64_t n = o.is_array() ? o.size() : o.get<std::string>().size();
      auto bound = [&](const ExprP& x, int64_t d) {
        if (!x) return d;
        int64_t v = eval(x, c).get<int64_t>();
        if (v < 0) v += n;
        return std::max<int64_t>(0, std::min(n, v));
      };
      int64_t lo = bound(e->a[1], 0), hi = bound(e->a[2], n);
      if (o.is_string()) return hi > lo ? o.get<std::string>().substr(lo, hi - lo) : "";
      json out = json::array();
      for (int64_t i = lo; i < hi; ++i) out.push_back(o[static_cast<size_t>(i)]);
      return out;
    }
    case Expr::Call: {
      std::vector<json> args;
      for (size_t i = 1; i < e->a.size(); ++i) args.push_back(eval(e->a[i], c));
      auto& callee = e->a[0];
      if (callee->kind == Expr::Name) {
        if (callee->s == "raise_exception") error(args.empty() ? "raise_exception" : to_text(args[0]));
        if (callee->s == "namespace") {
          json ns = json::object();
          for (auto& [k, v] : e->kw) ns[k] = eval(v, c);
          return ns;
        }
        if (callee->s == "range") {
          json out = json::array();
          int64_t lo = args.size() > 1 ? args[0].get<int64_t>() : 0, hi = args.empty() ? 0 : args.back().get<int64_t>();
          for (int64_t i = lo; i < hi; ++i) out.push_back(i);
          return out;
        }
        error("the function '" + callee->s + "' is not supported");
      }
      if (callee->kind == Expr::Attr) return call_method(eval(callee->a[0], c), callee->s, args);
      error("unsupported call");
    }
    case Expr::Filter: {
      std::vector<json> args;
      for (size_t i = 1; i < e->a.size(); ++i) args.push_back(eval(e->a[i], c));
      return filter(e->s, eval(e->a[0], c), args);
    }
    case Expr::Unary: {
      json v = eval(e->a[0], c);
      if (e->s == "not") return !truthy(v);
      if (!v.is_number()) error("unary minus on " + std::string(v.type_name()));
      return v.is_number_integer() ? json(-v.get<int64_t>()) : json(-v.get<double>());
    }
    case Expr::Test: {
      json v = eval(e->a[0], c);
      bool r;
      const std::string& t = e->s;
      if (t == "defined") r = !is_undef(v);
      else if (t == "undefined") r = is_undef(v);
      else if (t == "none") r = v.is_null();
      else if (t == "string") r = v.is_string();
      else if (t == "number") r = v.is_number();
      else if (t == "integer") r = v.is_number_integer();
      else if (t == "mapping") r = v.is_object();
      else if (t == "sequence" || t == "iterable") r = v.is_array() || v.is_string() || v.is_object();
      else if (t == "true") r = v.is_boolean() && v.get<bool>();
      else if (t == "false") r = v.is_boolean() && !v.get<bool>();
      else error("the test 'is " + t + "' is not supported");
      return r != e->neg;
    }
    case Expr::Cond: {
      if (truthy(eval(e->a[1], c))) return eval(e->a[0], c);
      return e->a.size() > 2 ? eval(e->a[2], c) : undefined();
    }
    case Expr::Binary: {
      const std::string& o = e->s;
      if (o == "and") {
        json l = eval(e->a[0], c);
        return truthy(l) ? eval(e->a[1], c) : l;
      }
      if (o == "or") {
        json l = eval(e->a[0], c);
        return truthy(l) ? l : eval(e->a[1], c);
      }
      json l = eval(e->a[0], c), r = eval(e->a[1], c);
      if (o == "~") return to_text(l) + to_text(r);
      if (o == "==") return !is_undef(l) && !is_undef(r) ? l == r : is_undef(l) && is_undef(r);
      if (o == "!=") return !(!is_undef(l) && !is_undef(r) ? l == r : is_undef(l) && is_undef(r));
      if (o == "in") {
        if (r.is_string() && l.is_string()) return r.get<std::string>().find(l.get<std::string>()) != std::string::npos;
        if (r.is_array()) return std::find(r.begin(), r.end(), l) != r.end();
        if (r.is_object() && l.is_string()) return r.contains(l.get<std::string>());
        if (is_undef(r)) return false;
        error("'in' on " + std::string(r.type_name()));
      }
      if (o == "+" && l.is_string() && r.is_string()) return l.get<std::string>() + r.get<std::string>();
      if (o == "+" && l.is_array() && r.is_array()) {
        json out = l;
        for (auto& x : r) out.push_back(x);
        return out;
      }
      if (o == "<" || o == ">" || o == "<=" || o == ">=") {
        if (!((l.is_number() && r.is_number()) || (l.is_string() && r.is_string())))
          error("comparison " + o + " of " + l.type_name() + " and " + r.type_name());
        bool lt = l < r, gt = r < l;
        return o == "<" ? lt : o == ">" ? gt : o == "<=" ? !gt : !lt;
      }
      if (!l.is_number() || !r.is_number()) error("operator " + o + " on " + l.type_name() + " and " + r.type_name());
      if (l.is_number_integer() && r.is_number_integer() && o != "/") {
        int64_t x = l.get<int64_t>(), y = r.get<int64_t>();
        if ((o == "%" || o == "//") && y == 0) error("division by zero");
        if (o == "+") return x + y;
        if (o == "-") return x - y;
        if (o == "*") return x * y;
        if (o == "//") return x / y;
        if (o == "%") return ((x % y) + y) % y;
      }
      double x = l.get<double>(), y = r.get<double>();
      if (o == "+") return x + y;
      if (o == "-") return x - y;
      if (o == "*") return x * y;
      if (y == 0) error("division by zero");
      if (o == "/") return x / y;
      error("operator " + o + " on floats is not supported");
    }
  }
  error("bad expression");
}

void exec(const NodeP& n, Ctx& c, std::string& out) {
  switch (n->kind) {
    case Node::Text:
      out += n->text;
      return;
    case Node::Out:
      out += to_text(eval(n->e, c));
      return;
    case Node::Body:
      for (auto& x : n->body) exec(x, c, out);
      return;
    case Node::If:
      for (auto& [cond, body] : n->branches)
        if (truthy(eval(cond, c))) return exec(body, c, out);
      if (n->other) exec(n->other, c, out);
      return;
    case Node::Set: {
      json v = eval(n->e, c);
      if (n->vars.size() == 1) {
        c.scopes.back()[n->vars[0]] = v;
      } else {
        json* ns = c.find(n->vars[0]);
        if (!ns || !ns->is_object()) error("{% set " + n->vars[0] + "." + n->vars[1] + " %} needs a namespace()");
        (*ns)[n->vars[1]] = v;
      }
      return;
    }
    case Node::For: {
      json seq = eval(n->e, c);
      if (seq.is_object()) {
        json items = json::array();
        for (auto& [k, v] : seq.items()) items.push_back(n->vars.size() > 1 ? json::array({k, v}) : json(k));
        seq = items;
      }
      if (is_undef(seq) || seq.is_null()) seq = json::array();
      if (!seq.is_array()) error("for loop over " + std::string(seq.type_name()));
      if (seq.empty()) {
        if (n->other) exec(n->other, c, out);
        return;
      }
      const int64_t len = seq.size();
      for (size_t i = 0; i < seq.size(); ++i) {
        json scope = json::object();
        if (n->vars.size() == 1) {
          scope[n->vars[0]] = seq[i];
        } else {
          if (!seq[i].is_array() || seq[i].size() != n->vars.size()) error("cannot unpack a loop item into " + std::to_string(n->vars.size()) + " names");
          for (size_t v = 0; v < n->vars.size(); ++v) scope[n->vars[v]] = seq[i][v];
        }
        const int64_t k = static_cast<int64_t>(i);
        scope["loop"] = {{"index", k + 1}, {"index0", k}, {"first", k == 0}, {"last", k == len - 1},
                         {"length", len}, {"revindex", len - k}, {"revindex0", len - k - 1},
                         {"previtem", i > 0 ? seq[i - 1] : undefined()}, {"nextitem", i + 1 < seq.size() ? seq[i + 1] : undefined()}};
        c.scopes.push_back(scope);
        for (auto& x : n->body) exec(x, c, out);
        c.scopes.pop_back();
      }
      return;
    }
  }
}

}  // namespace

ChatTemplate::ChatTemplate(const std::string& source) {
  Builder b(split(source));
  std::string ended;
  Parser* tail = nullptr;
  root_ = b.parse_body({}, &ended, &tail);
}

ChatTemplate::~ChatTemplate() = default;

std::string ChatTemplate::render(const json& vars) const {
  Ctx c;
  c.scopes.push_back(vars.is_object() ? vars : json::object());
  c.scopes.push_back(json::object());
  std::string out;
  try {
    exec(root_, c, out);
  } catch (const json::exception& e) {
    throw ChatTemplateError(std::string("type error while rendering: ") + e.what());
  }
  return out;
}

std::string ChatTemplate::render(const json& messages, bool add_generation_prompt, const std::string& bos_token,
                                 const std::string& eos_token) const {
  return render(json{{"messages", messages},
                     {"add_generation_prompt", add_generation_prompt},
                     {"bos_token", bos_token},
                     {"eos_token", eos_token}});
}

}  // namespace peft::serve
