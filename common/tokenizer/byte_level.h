// GPT-2's byte-level alphabet: every byte 0..255 stands for one printable Unicode character, so
// that a byte-level BPE vocabulary is a set of ordinary strings with no spaces or control
// characters in them. Printable Latin-1 bytes map to themselves; the rest (controls, space,
// 0x7F-0xA0, 0xAD) map in byte order to U+0100, U+0101, ... (so ' ' is U+0120 'Ġ').
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace kvshare {

// The UTF-8 of the character that stands for `byte`.
const std::string& ByteToUnicode(uint8_t byte);
// `bytes` with each byte replaced by its character.
std::string BytesToUnicode(std::string_view bytes);
// The byte a character stands for, or -1 when `codepoint` is not in the alphabet.
int UnicodeToByte(uint32_t codepoint);
// The inverse of BytesToUnicode for a token's text. Characters outside the alphabet (e.g. in
// added tokens that were never byte-encoded) are kept as their UTF-8.
std::string UnicodeToBytes(std::string_view text);

}  // namespace kvshare
