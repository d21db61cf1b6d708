#include "search_service/projection_sets.h"

#include "absl/strings/str_format.h"

namespace kvshare {
namespace {

// Byte offset of the start of line `after_line + 1` (1-based), or npos past the end.
size_t OffsetAfterLine(std::string_view text, int after_line) {
  size_t offset = 0;
  for (int line = 0; line < after_line; ++line) {
    offset = text.find('\n', offset);
    if (offset == std::string_view::npos) return offset;
    ++offset;
  }
  return offset;
}

absl::StatusOr<CalibrationSet> SetAfter(std::string_view text, const Tokenizer& tokenizer,
                                        int after_line, const CalibrationOptions& options,
                                        const std::string& source, const char* what) {
  const size_t offset = OffsetAfterLine(text, after_line);
  if (offset == std::string_view::npos || offset >= text.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: no text after line %d for the projection %s set", source, after_line, what));
  }
  auto set = BuildCalibrationSet(
      text.substr(offset), tokenizer, options,
      absl::StrFormat("%s after line %d (projection %s set)", source, after_line, what));
  if (!set.ok()) return set.status();
  for (int& line : set->source_lines) line += after_line;
  return set;
}

}  // namespace

absl::StatusOr<ProjectionSets> BuildProjectionSets(std::string_view text,
                                                   const Tokenizer& tokenizer, int after_line,
                                                   const ProjectionSetOptions& options,
                                                   const std::string& source) {
  ProjectionSets sets;
  auto score = SetAfter(text, tokenizer, after_line, options.score, source, "scoring");
  if (!score.ok()) return score.status();
  sets.score = std::move(*score);
  auto fit = SetAfter(text, tokenizer, LastCalibrationLine(sets.score), options.fit, source, "fit");
  if (!fit.ok()) return fit.status();
  sets.fit = std::move(*fit);
  return sets;
}

int HeldoutEndLine(std::string_view text, const Tokenizer& tokenizer, int slice_after_line,
                   int64_t tokens, int margin_lines) {
  size_t pos = OffsetAfterLine(text, slice_after_line);
  int line = slice_after_line;
  int64_t seen = 0;
  while (pos != std::string_view::npos && pos < text.size() && seen < tokens) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    seen += int64_t(tokenizer.Encode(text.substr(pos, end - pos), /*add_bos=*/false).size()) + 1;
    ++line;
    pos = end + 1;
  }
  return line + margin_lines;
}

}  // namespace kvshare
