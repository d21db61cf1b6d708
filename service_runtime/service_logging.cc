#include "service_runtime/service_logging.h"

#include "absl/strings/str_format.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace kvshare::runtime {

absl::Status SetUpServiceLogging(const std::string& logger_name, const std::string& level) {
  const spdlog::level::level_enum parsed = spdlog::level::from_str(level);
  // from_str answers "off" for anything it does not know.
  if (parsed == spdlog::level::off && level != "off") {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--log-level '%s' is not one of trace, debug, info, warn, error, critical, off", level));
  }
  spdlog::set_default_logger(spdlog::stderr_logger_mt(logger_name));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e%z level=%l %v");
  spdlog::set_level(parsed);
  return absl::OkStatus();
}

}  // namespace kvshare::runtime
