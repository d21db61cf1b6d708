// Runs a command-line program (the `kvshare` CLI) as a subprocess the way a shell would: its
// stdin from a string, stdout and stderr captured apart, extra environment variables, a
// time limit. For the tests of what a user types and sees.
#pragma once

#include <string>
#include <vector>

#include "absl/time/time.h"

namespace kvshare::testing {

struct CliRun {
  int exit_code = -1;  // -1: killed at the time limit; 128 + N: killed by signal N
  std::string out;     // stdout
  std::string err;     // stderr
  double seconds = 0;  // wall time
};

// Runs `binary` with `args`; `env` entries are "NAME=value" (added to, or replacing in, this
// process's environment; "NAME=" sets it empty).
CliRun RunCli(const std::string& binary, const std::vector<std::string>& args,
              const std::string& stdin_text = "", const std::vector<std::string>& env = {},
              absl::Duration timeout = absl::Seconds(300));

}  // namespace kvshare::testing
