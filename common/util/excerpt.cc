#include "common/util/excerpt.h"

#include "absl/strings/str_format.h"

namespace kvshare {

std::string Excerpt(absl::string_view s, size_t max_bytes) {
  std::string out;
  const size_t n = s.size() < max_bytes ? s.size() : max_bytes;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
    } else {
      out += absl::StrFormat("\\x%02x", c);
    }
  }
  if (n < s.size()) out += absl::StrFormat("...(%d bytes)", s.size());
  return out;
}

}  // namespace kvshare
