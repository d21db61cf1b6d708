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

// `options.samples` contiguous windows of options.tokens (BOS counted, when the tokenizer has
// one) from the text after
// `after_line`; source_lines: the first line for every window but the last, which gets the line
// the windows end on (LastCalibrationLine: where the next set may start).
absl::StatusOr<CalibrationSet> WindowsAfter(std::string_view text, const Tokenizer& tokenizer,
                                            int after_line, const CalibrationOptions& options,
                                            const std::string& source, const char* what) {
  const int bos = tokenizer.bos_id() >= 0 ? 1 : 0;
  HeldoutOptions ho;
  ho.context = options.tokens;
  ho.tokens = int64_t(options.samples) * (options.tokens - bos);
  auto slice = BuildHeldoutSlice(
      text, tokenizer, after_line, ho,
      absl::StrFormat("%s after line %d (projection %s set)", source, after_line, what));
  if (!slice.ok()) return slice.status();
  CalibrationSet set;
  set.samples = options.samples;
  set.tokens = options.tokens;
  for (int s = 0; s < set.samples; ++s) {
    if (bos) set.ids.push_back(tokenizer.bos_id());
    const auto first = slice->ids.begin() + bos + size_t(s) * (options.tokens - bos);
    set.ids.insert(set.ids.end(), first, first + (options.tokens - bos));
    set.source_lines.push_back(slice->first_line);
  }
  set.source_lines.back() = HeldoutEndLine(text, tokenizer, after_line, ho.tokens, 2);
  set.hash = slice->hash;
  return set;
}

}  // namespace

absl::StatusOr<ProjectionSets> BuildProjectionSets(std::string_view text,
                                                   const Tokenizer& tokenizer, int after_line,
                                                   const ProjectionSetOptions& options,
                                                   const std::string& source) {
  ProjectionSets sets;
  const auto build = options.contiguous ? WindowsAfter : SetAfter;
  auto score = build(text, tokenizer, after_line, options.score, source, "scoring");
  if (!score.ok()) return score.status();
  sets.score = std::move(*score);
  auto fit = build(text, tokenizer, LastCalibrationLine(sets.score), options.fit, source, "fit");
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
