// A gRPC server as every kvshare service runs one: the given services, grpc.health.v1 (the
// overall "" status and one per service name) and server reflection, listening on one address.
//
// Health starts NOT_SERVING; the owner calls SetServing(true) once it can answer (model loaded,
// store opened) and SetServing(false) when it starts to drain. Shutdown() stops the server,
// giving in-flight calls until the deadline, then cancelling them.
//
// The services are not owned and must outlive Shutdown(). Thread-safe.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace grpc {
class Server;
class Service;
}  // namespace grpc

namespace kvshare::runtime {

struct GrpcServerOptions {
  std::string address;                       // "host:port"; port 0 picks a free port
  std::vector<grpc::Service*> services;      // registered in order
  std::vector<std::string> health_services;  // full names, e.g. "kvshare.v1.SearchService"
  int max_receive_message_bytes = 0;         // 0 = gRPC's default (4 MiB)
};

class GrpcServer {
 public:
  // Unavailable naming the address when it cannot listen.
  static absl::StatusOr<std::unique_ptr<GrpcServer>> Start(const GrpcServerOptions& options);
  ~GrpcServer();  // Shutdown(0) if not done

  int port() const { return port_; }
  grpc::Server* server() { return server_.get(); }
  void SetServing(bool serving);
  void Shutdown(absl::Duration deadline = absl::Seconds(5));

 private:
  GrpcServer() = default;

  std::unique_ptr<grpc::Server> server_;
  std::vector<std::string> health_services_;
  int port_ = 0;
  std::atomic<bool> shut_down_{false};
};

}  // namespace kvshare::runtime
