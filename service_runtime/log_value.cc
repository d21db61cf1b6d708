#include "service_runtime/log_value.h"

#include "absl/strings/str_format.h"

namespace kvshare::runtime {
namespace {

bool IsControl(unsigned char c) { return c < 0x20 || c == 0x7f; }

// A byte a bare value may hold: printable ASCII except space and the three logfmt specials.
bool IsBare(unsigned char c) { return c > 0x20 && c < 0x7f && c != '"' && c != '=' && c != '\\'; }

bool IsKeyByte(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == '-';
}

void AppendEscaped(unsigned char c, std::string* out) {
  switch (c) {
    case '"':
      *out += "\\\"";
      return;
    case '\\':
      *out += "\\\\";
      return;
    case '\n':
      *out += "\\n";
      return;
    case '\r':
      *out += "\\r";
      return;
    case '\t':
      *out += "\\t";
      return;
    default:
      if (IsControl(c)) {
        *out += absl::StrFormat("\\u%04x", c);
      } else {
        out->push_back(static_cast<char>(c));
      }
  }
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string LogfmtValue(std::string_view value) {
  bool bare = !value.empty();
  for (unsigned char c : value) bare = bare && (IsBare(c) || c >= 0x80);
  if (bare) return std::string(value);
  std::string out = "\"";
  for (unsigned char c : value) AppendEscaped(c, &out);
  out += '"';
  return out;
}

std::string EscapeControlBytes(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (unsigned char c : text) {
    if (IsControl(c)) {
      AppendEscaped(c, &out);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseLogfmt(
    std::string_view line) {
  std::vector<std::pair<std::string, std::string>> fields;
  size_t i = 0;
  auto invalid = [&](const char* what) {
    return absl::InvalidArgumentError(absl::StrFormat("logfmt: %s at offset %d", what, i));
  };
  while (i < line.size()) {
    if (line[i] == ' ') {
      ++i;
      continue;
    }
    const size_t key_start = i;
    while (i < line.size() && IsKeyByte(line[i])) ++i;
    if (i == key_start || i >= line.size() || line[i] != '=') return invalid("expected key=");
    std::string key(line.substr(key_start, i - key_start));
    ++i;  // '='
    std::string value;
    if (i < line.size() && line[i] == '"') {
      ++i;
      bool closed = false;
      while (i < line.size()) {
        const char c = line[i++];
        if (c == '"') {
          closed = true;
          break;
        }
        if (c != '\\') {
          value.push_back(c);
          continue;
        }
        if (i >= line.size()) return invalid("dangling backslash");
        const char e = line[i++];
        switch (e) {
          case '"':
          case '\\':
            value.push_back(e);
            break;
          case 'n':
            value.push_back('\n');
            break;
          case 'r':
            value.push_back('\r');
            break;
          case 't':
            value.push_back('\t');
            break;
          case 'u': {
            int code = 0;
            for (int k = 0; k < 4; ++k) {
              const int d = i < line.size() ? HexDigit(line[i]) : -1;
              if (d < 0) return invalid("bad \\u escape");
              code = code * 16 + d;
              ++i;
            }
            if (code > 0x7f) return invalid("\\u escape above 0x7f");
            value.push_back(static_cast<char>(code));
            break;
          }
          default:
            return invalid("unknown escape");
        }
      }
      if (!closed) return invalid("unterminated quoted value");
      if (i < line.size() && line[i] != ' ') return invalid("text after a quoted value");
    } else {
      const size_t value_start = i;
      while (i < line.size() && line[i] != ' ') {
        if (!IsBare(static_cast<unsigned char>(line[i])) &&
            static_cast<unsigned char>(line[i]) < 0x80) {
          return invalid("byte not allowed in a bare value");
        }
        ++i;
      }
      value = std::string(line.substr(value_start, i - value_start));
    }
    fields.emplace_back(std::move(key), std::move(value));
  }
  return fields;
}

}  // namespace kvshare::runtime
