#include "service_runtime/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <set>
#include <system_error>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

namespace kvshare::runtime {
namespace {

// Set on the accepting thread while it runs a connection it has no thread for: the connection
// is refused (503) instead of served.
thread_local bool t_over_capacity = false;
// Set while a request is answered with an error after which the connection's bytes can no
// longer be trusted to line up with request boundaries (bad request line, broken body).
thread_local bool t_close_after_response = false;
// The connection this thread serves (for HttpClientGone), and the server's stop flag.
thread_local int t_connection_socket = -1;
thread_local const std::atomic<bool>* t_server_stopping = nullptr;

constexpr absl::Duration kStopPollSlice = absl::Milliseconds(100);

// Methods httplib routes (it answers any other with 400).
const std::set<std::string>& RoutableMethods() {
  static const auto* methods =
      new std::set<std::string>{"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
  return *methods;
}

const char* Reason(int status) {
  switch (status) {
    case 400:
      return "bad request";
    case 404:
      return "not found";
    case 405:
      return "method not allowed";
    case 413:
      return "payload too large";
    case 414:
      return "uri too long";
    case 417:
      return "expectation failed";
    case 500:
      return "internal error";
    default:
      return "error";
  }
}

std::string EscapeRegex(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::strchr("\\^$.|?*+()[]{}", c) != nullptr) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

// Polls `sock` for `events` for up to `timeout`; false on timeout, error, or once `*stop` is
// set (checked every kStopPollSlice).
bool WaitFor(int sock, short events, absl::Duration timeout,
             const std::atomic<bool>* stop = nullptr) {
  const absl::Time end = absl::Now() + timeout;
  for (;;) {
    if (stop != nullptr && stop->load()) return false;
    absl::Duration left = end - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    if (stop != nullptr) left = std::min(left, kStopPollSlice);
    pollfd p{sock, events, 0};
    const int ms = static_cast<int>(std::max<int64_t>(1, absl::ToInt64Milliseconds(left)));
    const int n = ::poll(&p, 1, ms);
    if (n > 0) return true;  // readable, writable, or hung up (the next read/write says which)
    if (n < 0 && errno != EINTR) return false;
  }
}

void AddressOf(int sock, bool peer, std::string& ip, int& port) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  const int rc = peer ? getpeername(sock, reinterpret_cast<sockaddr*>(&addr), &len)
                      : getsockname(sock, reinterpret_cast<sockaddr*>(&addr), &len);
  if (rc != 0) return;
  char buf[INET6_ADDRSTRLEN] = {0};
  if (addr.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &a->sin_addr, buf, sizeof(buf));
    port = ntohs(a->sin_port);
  } else if (addr.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof(buf));
    port = ntohs(a->sin6_port);
  }
  ip = buf;
}

// A connection's socket as httplib reads and writes it: buffered reads that fail once the
// current request's deadline passes, writes that fail after write_timeout blocked.
class DeadlineStream : public httplib::Stream {
 public:
  // Reads also give up once `*stop` is set (the server is shutting down).
  DeadlineStream(int sock, absl::Duration write_timeout, const std::atomic<bool>* stop)
      : sock_(sock), write_timeout_(write_timeout), stop_(stop) {}

  void set_deadline(absl::Time deadline) { deadline_ = deadline; }
  bool has_buffered() const { return begin_ < end_; }

  bool is_readable() const override {
    return has_buffered() || WaitFor(sock_, POLLIN, deadline_ - absl::Now(), stop_);
  }
  bool is_writable() const override { return WaitFor(sock_, POLLOUT, write_timeout_); }

  ssize_t read(char* ptr, size_t size) override {
    if (!has_buffered()) {
      if (!WaitFor(sock_, POLLIN, deadline_ - absl::Now(), stop_)) return -1;
      ssize_t n;
      do {
        n = ::recv(sock_, buf_, sizeof(buf_), 0);
      } while (n < 0 && errno == EINTR);
      if (n <= 0) return n;
      begin_ = 0;
      end_ = static_cast<size_t>(n);
    }
    const size_t n = std::min(size, end_ - begin_);
    std::memcpy(ptr, buf_ + begin_, n);
    begin_ += n;
    return static_cast<ssize_t>(n);
  }

  ssize_t write(const char* ptr, size_t size) override {
    if (!WaitFor(sock_, POLLOUT, write_timeout_)) return -1;
    ssize_t n;
    do {
      n = ::send(sock_, ptr, size, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    return n;
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    AddressOf(sock_, /*peer=*/true, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    AddressOf(sock_, /*peer=*/false, ip, port);
  }
  socket_t socket() const override { return sock_; }

 private:
  const int sock_;
  const absl::Duration write_timeout_;
  const std::atomic<bool>* const stop_;
  absl::Time deadline_ = absl::InfinitePast();
  char buf_[4096];
  size_t begin_ = 0;
  size_t end_ = 0;
};

// httplib's TaskQueue: one thread per connection, at most `max` at once; a connection beyond
// that runs on the accepting thread with t_over_capacity set (answered 503 at once). Threads
// are detached and share the counter through `state`, so a thread finishing after the queue is
// destroyed touches nothing freed.
class ConnectionThreads : public httplib::TaskQueue {
 public:
  explicit ConnectionThreads(int max) : max_(max), state_(std::make_shared<State>()) {}

  void enqueue(std::function<void()> fn) override {
    if (TrySpawn(fn)) return;
    t_over_capacity = true;
    fn();
    t_over_capacity = false;
  }

  // Waits until every connection thread has finished.
  void shutdown() override {
    absl::MutexLock lock(&state_->mu);
    state_->mu.Await(absl::Condition(
        +[](State* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu) { return s->live == 0; }, state_.get()));
  }

 private:
  struct State {
    absl::Mutex mu;
    int live ABSL_GUARDED_BY(mu) = 0;
  };

  bool TrySpawn(std::function<void()>& fn) {
    {
      absl::MutexLock lock(&state_->mu);
      if (state_->live >= max_) return false;
      ++state_->live;
    }
    try {
      std::thread([state = state_, fn = std::move(fn)]() mutable {
        fn();
        fn = nullptr;  // drop what it holds before the server may be destroyed
        absl::MutexLock lock(&state->mu);
        --state->live;
      }).detach();
      return true;
    } catch (const std::system_error&) {  // no thread to be had: refuse like a full server
      absl::MutexLock lock(&state_->mu);
      --state_->live;
      return false;
    }
  }

  const int max_;
  std::shared_ptr<State> state_;
};

void RefuseBusy(int sock) {
  static constexpr char kBusy[] =
      "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n"
      "Connection: close\r\nRetry-After: 1\r\n\r\ntoo many connections\n";
  (void)!::send(sock, kBusy, sizeof(kBusy) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
  ::shutdown(sock, SHUT_RDWR);
  ::close(sock);
}

}  // namespace

bool HttpClientGone() {
  if (t_connection_socket < 0) return false;
  if (t_server_stopping != nullptr && t_server_stopping->load()) return true;
  // POLLRDHUP: the peer sent FIN (closed or shut down its writing side); a pipelined next
  // request only makes the socket readable, which is not a departure.
  pollfd p{t_connection_socket, POLLRDHUP, 0};
  if (::poll(&p, 1, 0) <= 0) return false;
  return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

class HttpServer::Impl : public httplib::Server {
 public:
  explicit Impl(const HttpServerOptions& options) : options_(options) {}

  // Registers the routes and the status policy (404/405, errors, exceptions).
  absl::Status Configure(std::vector<HttpRoute> routes) {
    for (HttpRoute& route : routes) {
      if (route.path.empty() || route.path[0] != '/') {
        return absl::InvalidArgumentError(
            absl::StrFormat("route path '%s' does not start with '/'", route.path));
      }
      if (RoutableMethods().count(route.method) == 0) {
        return absl::InvalidArgumentError(absl::StrFormat("route %s: method '%s' is not one of %s",
                                                          route.path, route.method,
                                                          absl::StrJoin(RoutableMethods(), ", ")));
      }
      std::vector<std::string>& allowed = allowed_[route.path];
      if (std::find(allowed.begin(), allowed.end(), route.method) != allowed.end()) {
        return absl::InvalidArgumentError(
            absl::StrFormat("route %s %s is given twice", route.method, route.path));
      }
      allowed.push_back(route.method);
      if (route.method == "GET") allowed.push_back("HEAD");
      const std::string pattern = EscapeRegex(route.path);
      HttpHandler& h = route.handler;
      if (route.method == "GET") Get(pattern, std::move(h));
      if (route.method == "POST") Post(pattern, std::move(h));
      if (route.method == "PUT") Put(pattern, std::move(h));
      if (route.method == "PATCH") Patch(pattern, std::move(h));
      if (route.method == "DELETE") Delete(pattern, std::move(h));
      if (route.method == "OPTIONS") Options(pattern, std::move(h));
    }
    // Called for every response >= 400 (httplib's own and handlers').
    set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (res.status == 404) {
        auto it = allowed_.find(req.path);
        if (it != allowed_.end()) {
          res.status = 405;
          res.set_header("Allow", absl::StrJoin(it->second, ", "));
        }
      } else if (res.status != 405) {
        // 400 (bad request line, headers or chunked body), 413, 414, 500...: what follows on
        // this connection may not start at a request boundary.
        t_close_after_response = true;
      }
      if (res.body.empty()) SetErrorBody(res);
    });
    set_exception_handler(
        [this](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
          res.status = 500;
          res.body.clear();
          SetErrorBody(res);
        });
    // SO_REUSEADDR (restart while old connections linger in TIME_WAIT) and, unlike httplib's
    // default, no SO_REUSEPORT: a second server on the same port must fail to bind.
    set_socket_options([](socket_t sock) {
      int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    });
    set_payload_max_length(options_.max_body_bytes);
    set_read_timeout(absl::ToInt64Seconds(options_.request_timeout));
    set_write_timeout(absl::ToInt64Seconds(options_.write_timeout));
    const int max_connections = options_.max_connections;
    new_task_queue = [max_connections] { return new ConnectionThreads(max_connections); };
    return absl::OkStatus();
  }

  // httplib listens with a backlog of 5, too short for a burst of connections.
  void WidenBacklog() { ::listen(svr_sock_, 128); }

  void BeginStop() { stopping_ = true; }

 private:
  void SetErrorBody(httplib::Response& res) const {
    if (options_.error_body) {
      auto [type, body] = options_.error_body(res.status, Reason(res.status));
      res.set_content(body, type.c_str());
    } else {
      res.set_content(absl::StrFormat("%d %s\n", res.status, Reason(res.status)), "text/plain");
    }
  }

  // Replaces httplib's keep-alive loop: waits for each request with idle_timeout, gives it
  // request_timeout to arrive, and closes the connection after an error that may leave it out
  // of step. Waits end early once Shutdown begins.
  bool process_and_close_socket(socket_t sock) override {
    if (t_over_capacity) {
      RefuseBusy(sock);
      return false;
    }
    DeadlineStream stream(sock, options_.write_timeout, &stopping_);
    t_connection_socket = sock;
    t_server_stopping = &stopping_;
    bool ok = true;
    for (int served = 0; served < options_.max_requests_per_connection; ++served) {
      if (!stream.has_buffered() && !AwaitRequest(sock)) break;
      stream.set_deadline(absl::Now() + options_.request_timeout);
      const bool last = served + 1 == options_.max_requests_per_connection || stopping_;
      bool closed = false;
      t_close_after_response = false;
      ok = process_request(stream, last, closed, nullptr);
      if (!ok || closed || last || t_close_after_response) break;
    }
    t_connection_socket = -1;
    t_server_stopping = nullptr;
    ::shutdown(sock, SHUT_RDWR);
    ::close(sock);
    return ok;
  }

  bool AwaitRequest(int sock) { return WaitFor(sock, POLLIN, options_.idle_timeout, &stopping_); }

  const HttpServerOptions options_;
  std::map<std::string, std::vector<std::string>> allowed_;  // path -> methods (fixed at start)
  std::atomic<bool> stopping_{false};
};

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpServerOptions& options,
                                                              std::vector<HttpRoute> routes) {
  const std::string address = absl::StrFormat("%s:%d", options.host, options.port);
  if (options.max_connections < 1 || options.max_requests_per_connection < 1 ||
      options.idle_timeout <= absl::ZeroDuration() ||
      options.request_timeout <= absl::ZeroDuration() ||
      options.write_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "HTTP server %s: max_connections (%d) and max_requests_per_connection (%d) must be >= 1 "
        "and the timeouts positive",
        address, options.max_connections, options.max_requests_per_connection));
  }
  std::unique_ptr<HttpServer> server(new HttpServer());
  server->impl_ = std::make_unique<Impl>(options);
  absl::Status s = server->impl_->Configure(std::move(routes));
  if (!s.ok()) return s;

  errno = 0;
  if (options.port == 0) {
    server->port_ = server->impl_->bind_to_any_port(options.host);
  } else if (server->impl_->bind_to_port(options.host, options.port)) {
    server->port_ = options.port;
  }
  if (server->port_ <= 0) {
    const int err = errno;
    return absl::UnavailableError(
        absl::StrFormat("cannot listen on %s%s", address,
                        err != 0 ? std::string(": ") + strerror(err) : std::string()));
  }
  server->impl_->WidenBacklog();
  Impl* impl = server->impl_.get();
  server->listener_ = std::thread([impl] { impl->listen_after_bind(); });
  // stop() only stops a server that is running: wait for it, so Shutdown cannot miss it.
  const absl::Time end = absl::Now() + absl::Seconds(10);
  while (!impl->is_running() && absl::Now() < end) absl::SleepFor(absl::Milliseconds(1));
  if (!impl->is_running()) {
    impl->stop();
    server->listener_.join();
    return absl::UnavailableError(absl::StrFormat("HTTP server on %s did not start", address));
  }
  return server;
}

HttpServer::~HttpServer() { Shutdown(); }

void HttpServer::Shutdown() {
  std::call_once(shut_down_, [this] {
    if (!listener_.joinable()) return;  // Start failed before listening
    impl_->BeginStop();
    impl_->stop();
    listener_.join();
  });
}

}  // namespace kvshare::runtime
