#include "service_runtime/service_logging.h"

#include <algorithm>
#include <string_view>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "service_runtime/log_value.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace kvshare::runtime {
namespace {

std::string Timestamp(const spdlog::details::log_msg& msg) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::FromChrono(msg.time), absl::UTCTimeZone());
}

std::string LevelName(const spdlog::details::log_msg& msg) {
  const auto name = spdlog::level::to_string_view(msg.level);
  return std::string(name.data(), name.size());
}

class LogfmtFormatter : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const std::string line = absl::StrFormat(
        "ts=%s level=%s %s\n", Timestamp(msg), LevelName(msg),
        EscapeControlBytes(std::string_view(msg.payload.data(), msg.payload.size())));
    dest.append(line.data(), line.data() + line.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<LogfmtFormatter>();
  }
};

class JsonFormatter : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    // nlohmann::ordered_json keeps ts and level first, then the message's order.
    nlohmann::ordered_json j;
    j["ts"] = Timestamp(msg);
    j["level"] = LevelName(msg);
    const std::string_view payload(msg.payload.data(), msg.payload.size());
    auto fields = ParseLogfmt(payload);
    if (fields.ok()) {
      for (auto& [key, value] : *fields) {
        if (!j.contains(key)) j[key] = std::move(value);
      }
    } else {
      j["msg"] = std::string(payload);
    }
    // Invalid UTF-8 becomes U+FFFD rather than an exception in the logger.
    const std::string line =
        j.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace) + "\n";
    dest.append(line.data(), line.data() + line.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }
};

}  // namespace

const std::vector<std::string>& LogFormats() {
  static const auto* formats = new std::vector<std::string>{"logfmt", "json"};
  return *formats;
}

std::unique_ptr<spdlog::formatter> MakeLogFormatter(const std::string& format) {
  if (format == "json") return std::make_unique<JsonFormatter>();
  return std::make_unique<LogfmtFormatter>();
}

absl::Status SetUpServiceLogging(const std::string& logger_name, const std::string& level,
                                 const std::string& format) {
  const spdlog::level::level_enum parsed = spdlog::level::from_str(level);
  // from_str answers "off" for anything it does not know.
  if (parsed == spdlog::level::off && level != "off") {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--log-level '%s' is not one of trace, debug, info, warn, error, critical, off", level));
  }
  if (std::find(LogFormats().begin(), LogFormats().end(), format) == LogFormats().end()) {
    return absl::InvalidArgumentError(absl::StrFormat("--log-format '%s' is not one of %s", format,
                                                      absl::StrJoin(LogFormats(), ", ")));
  }
  spdlog::set_default_logger(spdlog::stderr_logger_mt(logger_name));
  spdlog::set_formatter(MakeLogFormatter(format));
  spdlog::set_level(parsed);
  return absl::OkStatus();
}

}  // namespace kvshare::runtime
