// CPU time of this process, all threads (user + system), in seconds. On a host shared with
// other work, per-CPU-second figures compare runs that wall time cannot.
#pragma once

#include <sys/resource.h>

namespace kvshare {

inline double ProcessCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

}  // namespace kvshare
