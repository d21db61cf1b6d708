// The services' HTTP server and /metrics endpoint (service_runtime/http_server.h,
// metrics_exposer.h) on loopback: every junk request the attack run sent gets a status and
// leaves the server answering; idle, half-open and slow connections neither stall it nor pile
// up; a busy port fails Start naming it.
#include "service_runtime/http_server.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/counter.h"
#include "prometheus/registry.h"
#include "service_runtime/metrics_exposer.h"
#include "tests/support/http_probe.h"

namespace kvshare::runtime {
namespace {

using ::testing::HasSubstr;
using testing::HttpExchange;
using testing::HttpGet;
using testing::HttpStatus;
using ::testing::StartsWith;

// The header block of a response (status line included), lower-cased names kept as sent.
std::string Headers(const std::string& response) {
  return response.substr(0, response.find("\r\n\r\n") + 2);
}
std::string Body(const std::string& response) {
  const size_t end = response.find("\r\n\r\n");
  return end == std::string::npos ? "" : response.substr(end + 4);
}

class MetricsServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    registry_ = std::make_shared<prometheus::Registry>();
    auto& family = prometheus::BuildCounter()
                       .Name("kvshare_test_requests_total")
                       .Help("test counter")
                       .Register(*registry_);
    family.Add({}).Increment(3);
    auto started = StartMetricsServer("127.0.0.1", 0, {registry_});
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = *std::move(started);
  }

  int port() const { return server_->port(); }

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<HttpServer> server_;
};

TEST_F(MetricsServerTest, GetServesTheRegistryInTextFormat004) {
  const std::string r = HttpGet(port(), "/metrics");
  EXPECT_EQ(HttpStatus(r), 200) << r;
  EXPECT_THAT(Headers(r), HasSubstr("Content-Type: text/plain; version=0.0.4"));
  EXPECT_THAT(Body(r), HasSubstr("# TYPE kvshare_test_requests_total counter\n"));
  EXPECT_THAT(Body(r), HasSubstr("kvshare_test_requests_total 3\n"));
}

TEST_F(MetricsServerTest, HeadAnswersTheHeadersWithoutABody) {
  const std::string r =
      HttpExchange(port(), "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(HttpStatus(r), 200) << r;
  EXPECT_THAT(Headers(r), HasSubstr("Content-Type: text/plain; version=0.0.4"));
  EXPECT_EQ(Body(r), "");
}

TEST_F(MetricsServerTest, OtherMethodsAre405WithAllowAndOtherPaths404) {
  for (const char* method : {"POST", "PUT", "PATCH", "DELETE", "OPTIONS"}) {
    const std::string r = HttpExchange(
        port(), std::string(method) +
                    " /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2"
                    "\r\n\r\nab");
    EXPECT_EQ(HttpStatus(r), 405) << method << "\n" << r;
    EXPECT_THAT(Headers(r), HasSubstr("Allow: GET, HEAD")) << method;
  }
  for (const char* path : {"/", "/favicon.ico", "/metrics/", "/metricsx", "/METRICS"}) {
    EXPECT_EQ(HttpStatus(HttpGet(port(), path)), 404) << path;
  }
}

TEST_F(MetricsServerTest, EveryJunkRequestGetsAStatusAndTheServerKeepsAnswering) {
  for (const auto& [name, request] : testing::MetricsJunkRequests()) {
    const absl::Time start = absl::Now();
    const std::string r = HttpExchange(port(), request, absl::Seconds(15));
    std::printf("%-28s %5.2f s  %s\n", name.c_str(), absl::ToDoubleSeconds(absl::Now() - start),
                r.substr(0, r.find('\r')).c_str());
    // A status, or (for bytes that are not HTTP at all) a closed connection; never a hang.
    const int status = HttpStatus(r);
    EXPECT_TRUE(r.empty() || (status >= 200 && status < 600)) << name << ":\n" << r;
    EXPECT_EQ(HttpStatus(HttpGet(port(), "/metrics")), 200) << "after " << name;
  }
  // The ones the civetweb exposer died on, with their exact answers.
  const auto junk = testing::MetricsJunkRequests();
  EXPECT_EQ(HttpStatus(HttpExchange(port(), junk[0].second)), 404);  // GET /
  EXPECT_EQ(HttpStatus(HttpExchange(port(), junk[1].second)), 200);  // HEAD /metrics
  EXPECT_EQ(HttpStatus(HttpExchange(port(), junk[2].second)), 405);  // POST /metrics
  EXPECT_EQ(HttpStatus(HttpExchange(port(), junk[3].second)), 404);  // /favicon.ico
  EXPECT_EQ(HttpStatus(HttpExchange(port(), junk[4].second)), 405);  // Expect: 100-continue
  EXPECT_EQ(HttpStatus(HttpExchange(port(), junk[5].second)), 400);  // malformed chunks
}

TEST_F(MetricsServerTest, TwoHundredHalfOpenConnectionsDoNotDelayAScrape) {
  testing::HalfOpenConnections idle(port(), 200);
  ASSERT_EQ(idle.opened(), 200);
  // The timeout is a hang guard, not a speed target: the idle ones time out after 5 s, so a
  // server that queued the scrape behind them would need far longer than this.
  const std::string r = HttpGet(port(), "/metrics", absl::Seconds(4));
  EXPECT_EQ(HttpStatus(r), 200) << r;
}

TEST_F(MetricsServerTest, KeepAliveServesSeveralRequestsOnOneConnection) {
  const std::string one = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
  const std::string r = HttpExchange(
      port(), one + one + "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  size_t count = 0;
  for (size_t at = r.find("HTTP/1.1 200"); at != std::string::npos;
       at = r.find("HTTP/1.1 200", at + 1)) {
    ++count;
  }
  EXPECT_EQ(count, 3u) << r;
}

TEST(HttpServerTest, ConnectionsBeyondTheLimitAre503AndServedAgainOnceFreed) {
  HttpServerOptions options;
  options.max_connections = 4;
  HttpRoute route{"GET", "/ping", [](const httplib::Request&, httplib::Response& res) {
                    res.set_content("pong", "text/plain");
                  }};
  auto server = HttpServer::Start(options, {route});
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  {
    testing::HalfOpenConnections idle(port, 4);
    absl::SleepFor(absl::Milliseconds(200));  // let the server take all four
    const std::string r = HttpGet(port, "/ping", absl::Seconds(4));
    EXPECT_EQ(HttpStatus(r), 503) << r;
  }
  // Closed by the client: their threads end at once (a read of 0), freeing the slots.
  int status = 0;
  const absl::Time end = absl::Now() + absl::Seconds(10);
  while (status != 200 && absl::Now() < end) {
    status = HttpStatus(HttpGet(port, "/ping", absl::Seconds(4)));
    if (status != 200) absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(status, 200);
}

TEST(HttpServerTest, ASlowSenderIsCutAtTheRequestTimeout) {
  HttpServerOptions options;
  options.request_timeout = absl::Seconds(1);
  auto server = HttpServer::Start(options, {});
  ASSERT_TRUE(server.ok()) << server.status();
  const int fd = testing::ConnectLoopback((*server)->port(), absl::Milliseconds(100));
  ASSERT_GE(fd, 0);
  // One header byte every 100 ms would keep each read alive forever; the whole request has
  // 1 s. The connection must be closed by the server well before 20 s of trickling.
  bool closed = false;
  const absl::Time end = absl::Now() + absl::Seconds(20);
  const std::string trickle = "GET /ping HTTP/1.1\r\nX-Slow: " + std::string(400, 'a');
  for (size_t i = 0; i < trickle.size() && absl::Now() < end && !closed; ++i) {
    if (::send(fd, &trickle[i], 1, MSG_NOSIGNAL) != 1) closed = true;
    char buf[512];
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);  // SO_RCVTIMEO 100 ms
    if (n == 0) closed = true;
    if (n > 0) closed = true;  // a 400 before closing is fine too
  }
  ::close(fd);
  EXPECT_TRUE(closed);
}

TEST(HttpServerTest, ABusyPortFailsStartNamingIt) {
  auto first = HttpServer::Start(HttpServerOptions{}, {});
  ASSERT_TRUE(first.ok()) << first.status();
  HttpServerOptions options;
  options.port = (*first)->port();
  auto second = HttpServer::Start(options, {});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(second.status().message(), HasSubstr("127.0.0.1:" + std::to_string(options.port)));
}

TEST(HttpServerTest, RefusesBadRoutes) {
  auto handler = [](const httplib::Request&, httplib::Response&) {};
  EXPECT_EQ(HttpServer::Start({}, {{"GET", "metrics", handler}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(HttpServer::Start({}, {{"BREW", "/x", handler}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(HttpServer::Start({}, {{"GET", "/x", handler}, {"GET", "/x", handler}}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(HttpServerTest, AHandlerThatThrowsIs500AndTheServerGoesOn) {
  auto server =
      HttpServer::Start({}, {{"GET", "/boom", [](const httplib::Request&, httplib::Response&) {
                                throw std::runtime_error("boom");
                              }}});
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(HttpStatus(HttpGet((*server)->port(), "/boom")), 500);
  EXPECT_EQ(HttpStatus(HttpGet((*server)->port(), "/boom")), 500);
}

TEST(HttpServerTest, ShutdownDoesNotWaitForIdleConnectionsToTimeOut) {
  HttpServerOptions options;
  options.idle_timeout = absl::Seconds(60);
  auto server = HttpServer::Start(options, {});
  ASSERT_TRUE(server.ok()) << server.status();
  testing::HalfOpenConnections idle((*server)->port(), 10);
  absl::SleepFor(absl::Milliseconds(100));
  const absl::Time start = absl::Now();
  (*server)->Shutdown();
  // Idle and half-sent connections are dropped at the next 100 ms poll slice, not after their
  // 60 s idle or 10 s request timeouts.
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

}  // namespace
}  // namespace kvshare::runtime
