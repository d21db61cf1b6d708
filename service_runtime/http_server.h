// A small HTTP/1.1 server (cpp-httplib) for a service's side endpoints (/metrics today), built so
// that a careless or hostile client can neither crash it nor stall it:
//
//   - Routes are exact paths. A route's method answers; a GET route also answers HEAD (headers
//     only); another method on a known path is 405 with Allow; an unknown path is 404. A
//     malformed request (bad request line, broken chunked body, body over max_body_bytes) is a
//     4xx from the parser; a handler that throws is a 500. The handler never sees them.
//   - Each connection is served by its own thread, at most max_connections at once; a connection
//     beyond that is answered 503 and closed at once rather than queued behind the others.
//   - A connection waits at most idle_timeout for a request to begin (new or kept alive), a
//     request must arrive whole within request_timeout (so a slow sender is cut, not waited
//     for), and one blocked write gives up after write_timeout. Half-open and idle connections
//     therefore hold a thread for at most idle_timeout and never delay another connection.
//   - The listening socket has SO_REUSEADDR and not SO_REUSEPORT: a busy port fails Start()
//     with Unavailable naming host:port instead of silently sharing it.
//
// Handlers run on connection threads, concurrently; they must be thread-safe. Routes are fixed
// at Start(). A handler may answer with a chunked content provider (httplib's
// Response::set_chunked_content_provider: server-sent events, say); the provider runs on the same
// connection thread after the handler returns, and a long-running handler or provider polls
// HttpClientGone() to stop work nobody will read. Shutdown() (also the destructor) stops accepting,
// cuts connections that are waiting for a request or its bytes (within 100 ms), and waits for
// handlers and writes in progress to end. Thread-safe.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "httplib.h"

namespace kvshare::runtime {

using HttpHandler = std::function<void(const httplib::Request&, httplib::Response&)>;

struct HttpRoute {
  std::string method;  // "GET", "POST", ...
  std::string path;    // exact, e.g. "/metrics"
  HttpHandler handler;
};

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // 0 picks a free port
  int max_connections = 256;
  absl::Duration idle_timeout = absl::Seconds(5);
  absl::Duration request_timeout = absl::Seconds(10);
  absl::Duration write_timeout = absl::Seconds(10);
  int max_requests_per_connection = 100;
  size_t max_body_bytes = 1 << 20;
  // The body of the error responses the server makes itself (404, 405, 413, 400 from the
  // parser, 500 from a throwing handler), as {content type, body}; null: "<status> <reason>\n"
  // as text/plain. A handler's own error response keeps the body it set.
  std::function<std::pair<std::string, std::string>(int status, const std::string& reason)>
      error_body;
};

// Called from a route handler or a content provider, on its connection's thread: true once the
// client has closed (or reset) the connection or the server is shutting down; false on any
// other thread. Never blocks.
bool HttpClientGone();

class HttpServer {
 public:
  // Unavailable naming host:port when it cannot listen; InvalidArgument for bad options or
  // routes (duplicate method and path, a path not starting with '/').
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const HttpServerOptions& options,
                                                           std::vector<HttpRoute> routes);
  ~HttpServer();

  int port() const { return port_; }
  void Shutdown();

  class Impl;  // the httplib::Server subclass (http_server.cc)

 private:
  HttpServer() = default;

  std::unique_ptr<Impl> impl_;
  std::once_flag shut_down_;
  std::thread listener_;
  int port_ = 0;
};

}  // namespace kvshare::runtime
