#include "service_runtime/shutdown_signal.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

namespace kvshare::runtime {
namespace {

int g_pipe[2] = {-1, -1};

void OnShutdownSignal(int signal) {
  const int saved_errno = errno;
  const unsigned char byte = static_cast<unsigned char>(signal);
  // A full pipe means a signal is already waiting to be read: dropping this one is fine.
  [[maybe_unused]] const ssize_t n = ::write(g_pipe[1], &byte, 1);
  errno = saved_errno;
}

}  // namespace

ShutdownSignal::ShutdownSignal() {
  if (::pipe2(g_pipe, O_CLOEXEC | O_NONBLOCK) != 0) std::abort();
  // Reads block; only the handler's writes must never block.
  ::fcntl(g_pipe[0], F_SETFL, ::fcntl(g_pipe[0], F_GETFL) & ~O_NONBLOCK);
  struct sigaction action {};
  action.sa_handler = &OnShutdownSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  ::sigaction(SIGTERM, &action, nullptr);
  ::sigaction(SIGINT, &action, nullptr);
}

ShutdownSignal::~ShutdownSignal() {
  struct sigaction action {};
  action.sa_handler = SIG_DFL;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGTERM, &action, nullptr);
  ::sigaction(SIGINT, &action, nullptr);
}

int ShutdownSignal::Wait() {
  unsigned char byte = 0;
  for (;;) {
    const ssize_t n = ::read(g_pipe[0], &byte, 1);
    if (n == 1) return byte;
    if (n < 0 && errno == EINTR) continue;
    std::abort();  // the pipe is ours alone; anything else is a bug
  }
}

const char* ShutdownSignal::Name(int signal) {
  switch (signal) {
    case SIGTERM:
      return "SIGTERM";
    case SIGINT:
      return "SIGINT";
  }
  return "signal";
}

}  // namespace kvshare::runtime
