// SIGTERM / SIGINT as a value main() waits for.
//
// Construct it first thing in main(), before any thread starts: it blocks both signals in the
// calling thread, every thread started later inherits the mask, and Wait() takes them with
// sigwait — so no handler runs on an arbitrary thread and the shutdown code is ordinary code.
#pragma once

namespace kvshare::runtime {

class ShutdownSignal {
 public:
  ShutdownSignal();
  // Blocks until SIGTERM or SIGINT arrives; returns it.
  int Wait();
  // "SIGTERM", "SIGINT", or the number.
  static const char* Name(int signal);

  ShutdownSignal(const ShutdownSignal&) = delete;
  ShutdownSignal& operator=(const ShutdownSignal&) = delete;
};

}  // namespace kvshare::runtime
