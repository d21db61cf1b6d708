// SIGTERM / SIGINT as a value main() waits for.
//
// The handler only writes the signal number to a pipe (async-signal-safe); Wait() reads it on
// main's thread, so the shutdown code is ordinary code. This holds whichever thread the kernel
// picks to take the signal — including threads that libraries start before main() (OpenBLAS's
// pool does), which a signal mask set in main() would not cover.
//
// One per process; construct it early in main().
#pragma once

namespace kvshare::runtime {

class ShutdownSignal {
 public:
  ShutdownSignal();
  ~ShutdownSignal();
  // Blocks until SIGTERM or SIGINT arrives (or arrived since construction); returns it.
  int Wait();
  // "SIGTERM", "SIGINT", or "signal".
  static const char* Name(int signal);

  ShutdownSignal(const ShutdownSignal&) = delete;
  ShutdownSignal& operator=(const ShutdownSignal&) = delete;
};

}  // namespace kvshare::runtime
