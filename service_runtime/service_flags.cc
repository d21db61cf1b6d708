#include "service_runtime/service_flags.h"

#include "absl/strings/str_join.h"
#include "service_runtime/build_info.h"
#include "service_runtime/service_logging.h"

namespace kvshare::runtime {

const std::vector<std::string>& LogLevels() {
  static const auto* levels =
      new std::vector<std::string>{"trace", "debug", "info", "warn", "error", "critical", "off"};
  return *levels;
}

void AddVersionFlag(CLI::App& app, const std::string& program) {
  app.set_version_flag("--version", VersionLine(program), "Print the version and git commit");
}

CLI::Option* AddLogLevelFlag(CLI::App& app, std::string* level) {
  return app.add_option("--log-level", *level, "Log level: " + absl::StrJoin(LogLevels(), ", "))
      ->capture_default_str()
      ->check(CLI::IsMember(LogLevels()));
}

CLI::Option* AddLogFormatFlag(CLI::App& app, std::string* format) {
  return app
      .add_option("--log-format", *format,
                  "Log lines as logfmt (key=value, values quoted and escaped) or json (one "
                  "object per line)")
      ->capture_default_str()
      ->check(CLI::IsMember(LogFormats()));
}

}  // namespace kvshare::runtime
