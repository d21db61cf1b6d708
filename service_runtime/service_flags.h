// The flags every kvshare binary shares (kvshare, kvshare-worker, kvshare-search), on CLI11:
//
//   --version     prints VersionLine(program) (build_info.h) and exits 0
//   --log-level   one of kLogLevels; anything else is refused at parse time (exit 105) with a
//                 message naming the allowed values, before the program does anything
//   --log-format  logfmt (default) or json (service_logging.h), checked the same way
#pragma once

#include <string>
#include <vector>

#include "CLI/CLI.hpp"

namespace kvshare::runtime {

// spdlog's level names, least to most severe.
const std::vector<std::string>& LogLevels();

void AddVersionFlag(CLI::App& app, const std::string& program);
// Adds --log-level bound to `*level` (its value is the default shown in --help).
CLI::Option* AddLogLevelFlag(CLI::App& app, std::string* level);
// Adds --log-format bound to `*format` (service_logging.h's LogFormats()).
CLI::Option* AddLogFormatFlag(CLI::App& app, std::string* format);

}  // namespace kvshare::runtime
