// ChatML chat templates without a Jinja engine: a template is accepted only if it is ChatML (it
// writes "<|im_start|>") and uses nothing beyond a small, fixed subset of Jinja — text, {{ }}
// with string concatenation, {% for message in messages %}, {% if/elif/else %} over
// comparisons of roles and loop.first/last/add_generation_prompt. Within that subset it renders
// exactly as transformers does (jinja2 with trim_blocks and lstrip_blocks); anything else is
// rejected with Error(kUnsupported) rather than rendered approximately. This covers SmolLM2's
// template, whose default system prompt therefore comes from the template text itself.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "chunkwise/core/error.hpp"
#include "chunkwise/model/tokenizer.hpp"

namespace chunkwise::detail {

class ChatTemplate {
 public:
  struct SpecialTokens {
    std::string bos;
    std::string eos;
  };

  ChatTemplate(std::string_view source, SpecialTokens tokens) : tokens_(std::move(tokens)) {
    if (source.find("<|im_start|>") == std::string_view::npos) unsupported("not a ChatML template");
    lex(source);
    std::size_t at = 0;
    std::string end_tag;
    body_ = parse_block(at, {}, end_tag);
  }

  [[nodiscard]] std::string render(std::span<const ChatMessage> messages, bool add_generation_prompt) const {
    Ctx ctx{messages, add_generation_prompt, -1};
    std::string out;
    run(body_, ctx, out);
    return out;
  }

 private:
  // ---- lexing: text and tags, with Jinja's whitespace rules applied to the text ---------------
  enum class SegKind { kText, kExpr, kStmt };
  struct Seg {
    SegKind kind;
    std::string text;
  };

  [[noreturn]] static void unsupported(const std::string& why) {
    throw Error(ErrorCode::kUnsupported, "chat template: " + why);
  }

  static bool is_ws(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
  }

  void lex(std::string_view src) {
    std::string s(src);
    if (!s.empty() && s.back() == '\n') s.pop_back();  // jinja2's keep_trailing_newline=False
    std::size_t i = 0;
    bool strip_ws = false;  // previous tag ended with '-'
    bool trim_nl = false;   // previous tag was a block: trim_blocks drops one newline
    while (true) {
      std::size_t open = s.find('{', i);
      while (open != std::string::npos && open + 1 < s.size() && s[open + 1] != '{' && s[open + 1] != '%' &&
             s[open + 1] != '#') {
        open = s.find('{', open + 1);
      }
      if (open + 1 >= s.size()) open = std::string::npos;
      std::string text = s.substr(i, open == std::string::npos ? std::string::npos : open - i);
      if (strip_ws) {
        std::size_t k = 0;
        while (k < text.size() && is_ws(text[k])) ++k;
        text.erase(0, k);
      } else if (trim_nl && !text.empty() && text[0] == '\n') {
        text.erase(0, 1);
      }
      if (open == std::string::npos) {
        if (!text.empty()) segs_.push_back({SegKind::kText, std::move(text)});
        return;
      }
      const char kind = s[open + 1];
      std::size_t p = open + 2;
      const char lflag = p < s.size() && (s[p] == '-' || s[p] == '+') ? s[p] : '\0';
      if (lflag != '\0') ++p;
      if (lflag == '-') {
        while (!text.empty() && is_ws(text.back())) text.pop_back();
      } else if (kind != '{' && lflag != '+') {
        // lstrip_blocks: spaces and tabs between the start of the line and a block tag go.
        std::size_t t = 0;
        while (t < text.size() && (text[text.size() - 1 - t] == ' ' || text[text.size() - 1 - t] == '\t'))
          ++t;
        const std::size_t before = open - t;
        if (t > 0 && (before == 0 || s[before - 1] == '\n')) text.resize(text.size() - t);
      }
      if (!text.empty()) segs_.push_back({SegKind::kText, std::move(text)});

      const std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
      std::size_t q = p;
      if (kind == '#') {
        q = s.find(close, p);
      } else {
        char quote = 0;  // closing braces inside string literals do not end the tag
        for (; q < s.size(); ++q) {
          if (quote != 0) {
            if (s[q] == '\\') {
              ++q;
            } else if (s[q] == quote) {
              quote = 0;
            }
          } else if (s[q] == '\'' || s[q] == '"') {
            quote = s[q];
          } else if (s.compare(q, 2, close) == 0) {
            break;
          }
        }
      }
      if (q == std::string::npos || q >= s.size()) unsupported("unterminated tag");
      std::string content = s.substr(p, q - p);
      char rflag = '\0';
      if (!content.empty() && (content.back() == '-' || content.back() == '+')) {
        rflag = content.back();
        content.pop_back();
      }
      strip_ws = rflag == '-';
      trim_nl = kind != '{' && rflag != '+';
      if (kind != '#') segs_.push_back({kind == '{' ? SegKind::kExpr : SegKind::kStmt, std::move(content)});
      i = q + 2;
    }
  }

  // ---- expressions -------------------------------------------------------------------------
  struct Expr {
    enum Op { kStr, kInt, kBool, kName, kAttr, kIndex, kAdd, kTilde, kEq, kNe, kAnd, kOr, kNot } op = kStr;
    std::string s;       // literal, name, attribute
    std::int64_t i = 0;  // literal int / bool
    std::vector<Expr> kids;
  };

  struct Tok {
    enum Kind { kEnd, kStr, kInt, kName, kPunct } kind = kEnd;
    std::string s;
    std::int64_t i = 0;
  };

  static std::vector<Tok> tokenize(std::string_view e) {
    std::vector<Tok> out;
    std::size_t i = 0;
    while (i < e.size()) {
      const char c = e[i];
      if (is_ws(c)) {
        ++i;
      } else if (c == '\'' || c == '"') {
        std::string lit;
        std::size_t k = i + 1;
        for (; k < e.size() && e[k] != c; ++k) {
          if (e[k] != '\\') {
            lit += e[k];
            continue;
          }
          if (++k >= e.size()) break;
          switch (e[k]) {
            case 'n':
              lit += '\n';
              break;
            case 't':
              lit += '\t';
              break;
            case 'r':
              lit += '\r';
              break;
            case '\\':
              lit += '\\';
              break;
            case '\'':
              lit += '\'';
              break;
            case '"':
              lit += '"';
              break;
            default:
              unsupported(std::string("string escape \\") + e[k]);
          }
        }
        if (k >= e.size()) unsupported("unterminated string literal");
        out.push_back({Tok::kStr, std::move(lit), 0});
        i = k + 1;
      } else if (c >= '0' && c <= '9') {
        std::int64_t v = 0;
        while (i < e.size() && e[i] >= '0' && e[i] <= '9' && v < (std::int64_t{1} << 40))
          v = v * 10 + (e[i++] - '0');
        out.push_back({Tok::kInt, {}, v});
      } else if (c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        std::size_t k = i;
        while (k < e.size() && (e[k] == '_' || (e[k] >= 'a' && e[k] <= 'z') || (e[k] >= 'A' && e[k] <= 'Z') ||
                                (e[k] >= '0' && e[k] <= '9'))) {
          ++k;
        }
        out.push_back({Tok::kName, std::string(e.substr(i, k - i)), 0});
        i = k;
      } else if (e.substr(i, 2) == "==" || e.substr(i, 2) == "!=") {
        out.push_back({Tok::kPunct, std::string(e.substr(i, 2)), 0});
        i += 2;
      } else if (c == '.' || c == '[' || c == ']' || c == '(' || c == ')' || c == '+' || c == '~' ||
                 c == '-') {
        out.push_back({Tok::kPunct, std::string(1, c), 0});
        ++i;
      } else {
        unsupported(std::string("'") + c + "' in expression '" + std::string(e) + "'");
      }
    }
    out.push_back({});
    return out;
  }

  struct Parser {
    const std::vector<Tok>& toks;
    std::size_t at = 0;
    const std::vector<std::string>& names;  // names in scope

    const Tok& peek() const { return toks[at]; }
    bool accept(Tok::Kind kind, std::string_view s) {
      if (toks[at].kind != kind || toks[at].s != s) return false;
      ++at;
      return true;
    }
    bool punct(std::string_view p) { return accept(Tok::kPunct, p); }
    bool word(std::string_view w) { return accept(Tok::kName, w); }
    static Expr node(Expr::Op op, std::vector<Expr> kids) {
      Expr e;
      e.op = op;
      e.kids = std::move(kids);
      return e;
    }

    Expr parse_or() {
      Expr e = parse_and();
      while (word("or")) e = node(Expr::kOr, {std::move(e), parse_and()});
      return e;
    }
    Expr parse_and() {
      Expr e = parse_not();
      while (word("and")) e = node(Expr::kAnd, {std::move(e), parse_not()});
      return e;
    }
    Expr parse_not() {
      if (word("not")) return node(Expr::kNot, {parse_not()});
      Expr e = parse_add();
      if (punct("==")) return node(Expr::kEq, {std::move(e), parse_add()});
      if (punct("!=")) return node(Expr::kNe, {std::move(e), parse_add()});
      return e;
    }
    Expr parse_add() {
      Expr e = parse_tilde();
      while (punct("+")) e = node(Expr::kAdd, {std::move(e), parse_tilde()});
      return e;
    }
    Expr parse_tilde() {
      Expr e = parse_postfix();
      while (punct("~")) e = node(Expr::kTilde, {std::move(e), parse_postfix()});
      return e;
    }
    Expr parse_postfix() {
      Expr e = parse_primary();
      while (true) {
        if (punct(".")) {
          if (peek().kind != Tok::kName) unsupported("attribute name expected");
          Expr a = node(Expr::kAttr, {std::move(e)});
          a.s = toks[at++].s;
          e = std::move(a);
        } else if (punct("[")) {
          Expr idx;
          if (peek().kind == Tok::kStr) {
            idx = node(Expr::kAttr, {std::move(e)});
            idx.s = toks[at++].s;
          } else {
            const bool neg = punct("-");
            if (peek().kind != Tok::kInt) unsupported("only literal subscripts are supported");
            idx = node(Expr::kIndex, {std::move(e)});
            idx.i = neg ? -toks[at++].i : toks[at++].i;
          }
          if (!punct("]")) unsupported("']' expected");
          e = std::move(idx);
        } else {
          return e;
        }
      }
    }
    Expr parse_primary() {
      const Tok& t = peek();
      Expr e;
      if (t.kind == Tok::kStr) {
        e.op = Expr::kStr;
        e.s = t.s;
      } else if (t.kind == Tok::kInt) {
        e.op = Expr::kInt;
        e.i = t.i;
      } else if (t.kind == Tok::kName &&
                 (t.s == "true" || t.s == "True" || t.s == "false" || t.s == "False")) {
        e.op = Expr::kBool;
        e.i = t.s[0] == 't' || t.s[0] == 'T';
      } else if (t.kind == Tok::kName) {
        if (std::find(names.begin(), names.end(), t.s) == names.end())
          unsupported("unknown name '" + t.s + "'");
        e.op = Expr::kName;
        e.s = t.s;
      } else if (punct("(")) {
        e = parse_or();
        if (!punct(")")) unsupported("')' expected");
        return e;
      } else {
        unsupported("unexpected end of expression");
      }
      ++at;
      return e;
    }
  };

  static Expr parse_expr(std::string_view text, const std::vector<std::string>& names) {
    const std::vector<Tok> toks = tokenize(text);
    Parser p{toks, 0, names};
    Expr e = p.parse_or();
    if (p.peek().kind != Tok::kEnd) unsupported("unsupported expression '" + std::string(text) + "'");
    return e;
  }

  // ---- statements --------------------------------------------------------------------------
  struct Node {
    enum Kind { kText, kOut, kFor, kIf } kind = kText;
    std::string text;                                      // kText
    Expr expr;                                             // kOut
    std::vector<std::pair<Expr, std::vector<Node>>> arms;  // kIf: condition, body; else has kBool true
    std::vector<Node> body;                                // kFor
  };

  static std::string first_word(const std::string& stmt, std::string& rest) {
    std::size_t b = 0;
    while (b < stmt.size() && is_ws(stmt[b])) ++b;
    std::size_t e = b;
    while (e < stmt.size() && !is_ws(stmt[e])) ++e;
    rest = stmt.substr(e);
    return stmt.substr(b, e - b);
  }

  // Parses until one of the end tags (returned in end_tag, with its statement text in end_rest).
  std::vector<Node> parse_block(std::size_t& at, const std::vector<std::string>& ends, std::string& end_tag) {
    std::vector<Node> nodes;
    while (at < segs_.size()) {
      const Seg& seg = segs_[at++];
      if (seg.kind == SegKind::kText) {
        nodes.push_back(Node{Node::kText, seg.text, {}, {}, {}});
        continue;
      }
      if (seg.kind == SegKind::kExpr) {
        Node n;
        n.kind = Node::kOut;
        n.expr = parse_expr(seg.text, names_);
        nodes.push_back(std::move(n));
        continue;
      }
      std::string rest;
      const std::string w = first_word(seg.text, rest);
      if (std::find(ends.begin(), ends.end(), w) != ends.end()) {
        end_tag = w;
        end_rest_ = rest;
        return nodes;
      }
      if (w == "for") {
        // Only `for NAME in messages`.
        std::string rest2;
        const std::string var = first_word(rest, rest2);
        std::string rest3;
        const std::string in = first_word(rest2, rest3);
        std::string rest4;
        const std::string seq = first_word(rest3, rest4);
        std::string tail;
        if (var.empty() || in != "in" || seq != "messages" || !first_word(rest4, tail).empty()) {
          unsupported("unsupported loop '" + seg.text + "'");
        }
        if (!loop_var_.empty()) unsupported("nested loops");
        loop_var_ = var;
        names_.push_back(var);
        names_.push_back("loop");
        Node n;
        n.kind = Node::kFor;
        std::string tag;
        n.body = parse_block(at, {"endfor"}, tag);
        if (tag != "endfor") unsupported("missing endfor");
        names_.resize(names_.size() - 2);
        loop_var_.clear();
        nodes.push_back(std::move(n));
      } else if (w == "if") {
        Node n;
        n.kind = Node::kIf;
        std::string cond = rest;
        bool is_else = false;
        while (true) {
          Expr c;
          if (is_else) {
            c.op = Expr::kBool;
            c.i = 1;
          } else {
            c = parse_expr(cond, names_);
          }
          std::string tag;
          std::vector<Node> body = parse_block(at, {"elif", "else", "endif"}, tag);
          n.arms.emplace_back(std::move(c), std::move(body));
          if (tag == "endif") break;
          if (tag.empty() || is_else) unsupported("malformed if");
          is_else = tag == "else";
          cond = end_rest_;
        }
        nodes.push_back(std::move(n));
      } else {
        unsupported("unsupported statement '" + w + "'");
      }
    }
    if (!ends.empty()) unsupported("missing {% " + ends.back() + " %}");
    return nodes;
  }

  // ---- evaluation --------------------------------------------------------------------------
  struct Ctx {
    std::span<const ChatMessage> messages;
    bool add_generation_prompt;
    std::int64_t index;  // loop index, -1 outside the loop
  };

  struct Value {
    enum Kind { kUndefined, kBool, kInt, kStr, kMessage, kMessages, kLoop } kind = kUndefined;
    std::int64_t i = 0;  // bool, int, message index
    std::string s;
  };

  static bool truthy(const Value& v) {
    switch (v.kind) {
      case Value::kBool:
      case Value::kInt:
        return v.i != 0;
      case Value::kStr:
        return !v.s.empty();
      case Value::kMessage:
      case Value::kLoop:
        return true;
      case Value::kMessages:
        return v.i != 0;
      case Value::kUndefined:
        return false;
    }
    return false;
  }

  static std::string to_text(const Value& v) {
    switch (v.kind) {
      case Value::kBool:
        return v.i != 0 ? "True" : "False";
      case Value::kInt:
        return std::to_string(v.i);
      case Value::kStr:
        return v.s;
      case Value::kUndefined:
        return {};
      default:
        unsupported("cannot print a message or list");
    }
  }

  static Value boolean(bool b) { return Value{Value::kBool, b ? 1 : 0, {}}; }

  Value eval(const Expr& e, const Ctx& ctx) const {
    switch (e.op) {
      case Expr::kStr:
        return Value{Value::kStr, 0, e.s};
      case Expr::kInt:
        return Value{Value::kInt, e.i, {}};
      case Expr::kBool:
        return boolean(e.i != 0);
      case Expr::kName:
        if (e.s == "messages")
          return Value{Value::kMessages, static_cast<std::int64_t>(ctx.messages.size()), {}};
        if (e.s == "add_generation_prompt") return boolean(ctx.add_generation_prompt);
        if (e.s == "bos_token") return Value{Value::kStr, 0, tokens_.bos};
        if (e.s == "eos_token") return Value{Value::kStr, 0, tokens_.eos};
        if (e.s == "loop") return Value{Value::kLoop, ctx.index, {}};
        return Value{Value::kMessage, ctx.index, {}};  // the loop variable
      case Expr::kIndex: {
        const Value base = eval(e.kids[0], ctx);
        if (base.kind != Value::kMessages) unsupported("subscript of something other than messages");
        const std::int64_t n = base.i;
        const std::int64_t k = e.i < 0 ? n + e.i : e.i;
        if (k < 0 || k >= n) return Value{};
        return Value{Value::kMessage, k, {}};
      }
      case Expr::kAttr: {
        const Value base = eval(e.kids[0], ctx);
        if (base.kind == Value::kMessage) {
          const ChatMessage& m = ctx.messages[static_cast<std::size_t>(base.i)];
          if (e.s == "role") return Value{Value::kStr, 0, m.role};
          if (e.s == "content") return Value{Value::kStr, 0, m.content};
          return Value{};
        }
        if (base.kind == Value::kLoop) {
          const auto n = static_cast<std::int64_t>(ctx.messages.size());
          if (e.s == "first") return boolean(base.i == 0);
          if (e.s == "last") return boolean(base.i == n - 1);
          if (e.s == "index0") return Value{Value::kInt, base.i, {}};
          if (e.s == "index") return Value{Value::kInt, base.i + 1, {}};
          if (e.s == "length") return Value{Value::kInt, n, {}};
          unsupported("loop." + e.s);
        }
        if (base.kind == Value::kUndefined) {
          throw Error(ErrorCode::kInvalidArgument, "chat template: '" + e.s + "' of a missing message");
        }
        unsupported("attribute '" + e.s + "'");
      }
      case Expr::kAdd: {
        const Value a = eval(e.kids[0], ctx);
        const Value b = eval(e.kids[1], ctx);
        if (a.kind == Value::kStr && b.kind == Value::kStr) return Value{Value::kStr, 0, a.s + b.s};
        if (a.kind == Value::kInt && b.kind == Value::kInt) return Value{Value::kInt, a.i + b.i, {}};
        throw Error(ErrorCode::kInvalidArgument, "chat template: '+' of mismatched values");
      }
      case Expr::kTilde:
        return Value{Value::kStr, 0, to_text(eval(e.kids[0], ctx)) + to_text(eval(e.kids[1], ctx))};
      case Expr::kEq:
      case Expr::kNe: {
        const Value a = eval(e.kids[0], ctx);
        const Value b = eval(e.kids[1], ctx);
        bool eq = false;
        if ((a.kind == Value::kStr && b.kind == Value::kStr)) {
          eq = a.s == b.s;
        } else if ((a.kind == Value::kInt || a.kind == Value::kBool) &&
                   (b.kind == Value::kInt || b.kind == Value::kBool)) {
          eq = a.i == b.i;
        } else {
          eq = a.kind == Value::kUndefined && b.kind == Value::kUndefined;
        }
        return boolean(e.op == Expr::kEq ? eq : !eq);
      }
      case Expr::kAnd:
        return boolean(truthy(eval(e.kids[0], ctx)) && truthy(eval(e.kids[1], ctx)));
      case Expr::kOr:
        return boolean(truthy(eval(e.kids[0], ctx)) || truthy(eval(e.kids[1], ctx)));
      case Expr::kNot:
        return boolean(!truthy(eval(e.kids[0], ctx)));
    }
    return Value{};
  }

  void run(const std::vector<Node>& nodes, Ctx& ctx, std::string& out) const {
    for (const Node& n : nodes) {
      switch (n.kind) {
        case Node::kText:
          out += n.text;
          break;
        case Node::kOut:
          out += to_text(eval(n.expr, ctx));
          break;
        case Node::kFor:
          for (std::size_t k = 0; k < ctx.messages.size(); ++k) {
            ctx.index = static_cast<std::int64_t>(k);
            run(n.body, ctx, out);
          }
          ctx.index = -1;
          break;
        case Node::kIf:
          for (const auto& [cond, body] : n.arms) {
            if (truthy(eval(cond, ctx))) {
              run(body, ctx, out);
              break;
            }
          }
          break;
      }
    }
  }

  SpecialTokens tokens_;
  std::vector<Seg> segs_;
  std::vector<Node> body_;
  std::vector<std::string> names_{"messages", "add_generation_prompt", "bos_token", "eos_token"};
  std::string loop_var_;
  std::string end_rest_;
};

}  // namespace chunkwise::detail
