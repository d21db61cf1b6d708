// A progress bar on stderr for long work (redrawn in place on a terminal, a line per ~10%
// otherwise so logs stay readable).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace kvshare::cli {

class ProgressBar {
 public:
  ProgressBar(std::string label, std::string unit);
  // done of total units; `detail` is shown after the counts.
  void Update(int64_t done, int64_t total, const std::string& detail = "");
  void Finish();

 private:
  std::string label_, unit_;
  bool tty_;
  int last_decile_ = -1;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace kvshare::cli
