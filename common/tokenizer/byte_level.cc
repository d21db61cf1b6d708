#include "common/tokenizer/byte_level.h"

#include <array>
#include <vector>

namespace kvshare {
namespace {

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

struct Alphabet {
  std::array<uint32_t, 256> codepoint{};
  std::array<std::string, 256> utf8;
  // Indexed by codepoint; the alphabet lies below U+0144.
  std::vector<int16_t> byte_of;

  Alphabet() : byte_of(0x200, -1) {
    uint32_t next_extra = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      codepoint[b] = printable ? static_cast<uint32_t>(b) : next_extra++;
      AppendUtf8(codepoint[b], &utf8[b]);
      byte_of[codepoint[b]] = static_cast<int16_t>(b);
    }
  }
};

const Alphabet& GetAlphabet() {
  static const Alphabet* const alphabet = new Alphabet();
  return *alphabet;
}

}  // namespace

const std::string& ByteToUnicode(uint8_t byte) { return GetAlphabet().utf8[byte]; }

std::string BytesToUnicode(std::string_view bytes) {
  const Alphabet& alphabet = GetAlphabet();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) out += alphabet.utf8[static_cast<uint8_t>(c)];
  return out;
}

int UnicodeToByte(uint32_t codepoint) {
  const Alphabet& alphabet = GetAlphabet();
  return codepoint < alphabet.byte_of.size() ? alphabet.byte_of[codepoint] : -1;
}

std::string UnicodeToBytes(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    const uint8_t lead = static_cast<uint8_t>(text[i]);
    size_t len = lead < 0x80           ? 1
                 : (lead >> 5) == 0x6  ? 2
                 : (lead >> 4) == 0xE  ? 3
                 : (lead >> 3) == 0x1E ? 4
                                       : 1;
    if (i + len > text.size()) len = 1;
    uint32_t cp = len == 1 ? lead : lead & (0x7F >> len);
    bool valid = true;
    for (size_t k = 1; k < len; ++k) {
      const uint8_t c = static_cast<uint8_t>(text[i + k]);
      if ((c & 0xC0) != 0x80) valid = false;
      cp = (cp << 6) | (c & 0x3F);
    }
    const int byte = valid ? UnicodeToByte(cp) : -1;
    if (byte >= 0) {
      out.push_back(static_cast<char>(byte));
    } else {
      // Not one of the alphabet's characters: the token's own text stands for itself.
      out.append(text.substr(i, valid ? len : 1));
    }
    i += valid ? len : 1;
  }
  return out;
}

}  // namespace kvshare
