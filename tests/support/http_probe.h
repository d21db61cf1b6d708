// Raw-socket HTTP probes for the services' HTTP endpoints: one exchange on a fresh loopback
// connection, the attack run's junk requests against /metrics, and half-open connections.
// Header-only; every call is bounded by a timeout so a server that stalls fails the test
// instead of hanging it.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace kvshare::testing {

// A TCP connection to 127.0.0.1:port with send and receive timeouts; -1 on failure.
inline int ConnectLoopback(int port, absl::Duration timeout) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  timeval tv{};
  tv.tv_sec = absl::ToInt64Seconds(timeout);
  tv.tv_usec = absl::ToInt64Microseconds(timeout) % 1000000;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Sends `request` on a new connection and returns everything the server sends until it closes
// the connection or `timeout` passes ("" when it cannot connect).
inline std::string HttpExchange(int port, absl::string_view request,
                                absl::Duration timeout = absl::Seconds(10)) {
  const int fd = ConnectLoopback(port, timeout);
  if (fd < 0) return "";
  const absl::Time end = absl::Now() + timeout;
  for (size_t sent = 0; sent < request.size();) {
    const ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;  // the server may answer (and close) before reading it all
    sent += static_cast<size_t>(n);
  }
  std::string out;
  char buf[4096];
  while (absl::Now() < end) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

// "HTTP/1.1 200 OK\r\n..." -> 200; 0 when there is no status line. Skips interim 1xx responses.
inline int HttpStatus(absl::string_view response) {
  for (;;) {
    if (!absl::StartsWith(response, "HTTP/1.")) return 0;
    if (response.size() < 12) return 0;
    const int status = std::atoi(std::string(response.substr(9, 3)).c_str());
    if (status >= 200) return status;
    const size_t end = response.find("\r\n\r\n");
    if (end == absl::string_view::npos) return status;
    response.remove_prefix(end + 4);
  }
}

inline std::string HttpGet(int port, absl::string_view path,
                           absl::Duration timeout = absl::Seconds(10)) {
  return HttpExchange(
      port, absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
      timeout);
}

// The requests the attack run sent to the services' /metrics port (each crashed the civetweb
// exposer), plus a few more of the same kind. name -> raw request.
inline std::vector<std::pair<std::string, std::string>> MetricsJunkRequests() {
  const std::string close = "Host: 127.0.0.1\r\nConnection: close\r\n";
  return {
      {"GET /", "GET / HTTP/1.1\r\n" + close + "\r\n"},
      {"HEAD /metrics", "HEAD /metrics HTTP/1.1\r\n" + close + "\r\n"},
      {"POST /metrics", "POST /metrics HTTP/1.1\r\n" + close + "Content-Length: 5\r\n\r\nhello"},
      {"GET /favicon.ico", "GET /favicon.ico HTTP/1.1\r\n" + close + "\r\n"},
      {"Expect: 100-continue", "POST /metrics HTTP/1.1\r\n" + close +
                                   "Expect: 100-continue\r\nContent-Length: 4\r\n\r\nbody"},
      {"malformed chunked body",
       "POST /metrics HTTP/1.1\r\n" + close +
           "Transfer-Encoding: chunked\r\n\r\nZZ-not-hex\r\nabc\r\n0\r\n\r\n"},
      {"chunk longer than its data",
       "POST /metrics HTTP/1.1\r\n" + close + "Transfer-Encoding: chunked\r\n\r\nfffffff\r\nabc"},
      {"PUT /metrics", "PUT /metrics HTTP/1.1\r\n" + close + "Content-Length: 0\r\n\r\n"},
      {"DELETE /metrics", "DELETE /metrics HTTP/1.1\r\n" + close + "\r\n"},
      {"OPTIONS *", "OPTIONS * HTTP/1.1\r\n" + close + "\r\n"},
      {"unknown method", "BREW /metrics HTTP/1.1\r\n" + close + "\r\n"},
      {"garbage request line", std::string("\x01\x02\xff garbage\r\n\r\n", 16)},
      {"HTTP/0.9", "GET /metrics\r\n\r\n"},
      {"header without colon", "GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n"},
      {"20 KB path", "GET /" + std::string(20000, 'a') + " HTTP/1.1\r\n" + close + "\r\n"},
      {"negative Content-Length",
       "POST /metrics HTTP/1.1\r\n" + close + "Content-Length: -5\r\n\r\n"},
      {"huge Content-Length",
       "POST /metrics HTTP/1.1\r\n" + close + "Content-Length: 99999999999999999999\r\n\r\n"},
      {"Range on /metrics", "GET /metrics HTTP/1.1\r\n" + close + "Range: bytes=5-1,-0\r\n\r\n"},
  };
}

// Connections that are opened and then send nothing, or only half a request line.
class HalfOpenConnections {
 public:
  HalfOpenConnections(int port, int count) {
    for (int i = 0; i < count; ++i) {
      const int fd = ConnectLoopback(port, absl::Seconds(5));
      if (fd < 0) continue;
      if (i % 2 == 1) (void)!::send(fd, "GET /metr", 9, MSG_NOSIGNAL);
      fds_.push_back(fd);
    }
  }
  ~HalfOpenConnections() {
    for (int fd : fds_) ::close(fd);
  }
  int opened() const { return static_cast<int>(fds_.size()); }

 private:
  std::vector<int> fds_;
};

}  // namespace kvshare::testing
