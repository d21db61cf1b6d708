#include "common/tokenizer/chat_template.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace kvshare {
namespace {

constexpr char kImStart[] = "<|im_start|>";
constexpr char kImEnd[] = "<|im_end|>";

// absl::string_view is not std::string_view in this abseil build, hence the conversions.
// The text of a Jinja string literal as rendered: templates write the newline after the role
// either raw or as the escape "\n".
std::string UnescapeJinjaLiteral(std::string_view s) {
  return absl::StrReplaceAll(absl::string_view(s.data(), s.size()),
                             {{"\\n", "\n"}, {"\\'", "'"}, {"\\\"", "\""}});
}

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::FromJinja(std::string_view jinja) {
  if (jinja.find(kImStart) == std::string_view::npos) {
    return absl::UnimplementedError(
        absl::StrCat("unsupported chat template (only ChatML is rendered without a Jinja "
                     "engine): \"",
                     std::string(jinja.substr(0, 60)), jinja.size() > 60 ? "...\"" : "\""));
  }
  ChatTemplate result;
  // A default system turn is a literal "<|im_start|>system" + newline + text + "<|im_end|>"
  // in the template (the per-message turns are built from message['role'] instead).
  const std::string system_open = absl::StrCat(kImStart, "system");
  size_t at = jinja.find(system_open);
  if (at != std::string_view::npos) {
    size_t text_begin = at + system_open.size();
    if (jinja.substr(text_begin, 1) == "\n") {
      text_begin += 1;
    } else if (jinja.substr(text_begin, 2) == "\\n") {
      text_begin += 2;
    } else {
      text_begin = std::string_view::npos;
    }
    const size_t text_end =
        text_begin == std::string_view::npos ? text_begin : jinja.find(kImEnd, text_begin);
    if (text_end != std::string_view::npos) {
      result.default_system_ =
          UnescapeJinjaLiteral(jinja.substr(text_begin, text_end - text_begin));
    }
  }
  return result;
}

std::string ChatTemplate::Apply(const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt) const {
  std::string out;
  const bool has_system = !messages.empty() && messages[0].role == "system";
  // SmolLM2's template inserts the default only inside its message loop, so an empty
  // conversation gets no system turn.
  if (default_system_.has_value() && !messages.empty() && !has_system) {
    absl::StrAppend(&out, kImStart, "system\n", *default_system_, kImEnd, "\n");
  }
  for (const ChatMessage& m : messages) {
    absl::StrAppend(&out, kImStart, m.role, "\n", m.content, kImEnd, "\n");
  }
  if (add_generation_prompt) absl::StrAppend(&out, kImStart, "assistant\n");
  return out;
}

}  // namespace kvshare
