#include "service_runtime/health_check.h"

#include <vector>

#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"

namespace kvshare::runtime {

const char* ServingStatusName(ServingStatus s) {
  switch (s) {
    case ServingStatus::kUnknown:
      return "UNKNOWN";
    case ServingStatus::kServing:
      return "SERVING";
    case ServingStatus::kNotServing:
      return "NOT_SERVING";
    case ServingStatus::kServiceUnknown:
      return "SERVICE_UNKNOWN";
  }
  return "UNKNOWN";
}

absl::StatusOr<ServingStatus> CheckGrpcHealth(const std::string& address,
                                              const std::string& service, absl::Duration timeout) {
  if (service.size() >= 128) {
    return absl::InvalidArgumentError("service name: at most 127 bytes");
  }
  // HealthCheckRequest: field 1 (service), length-delimited.
  std::string request(1, static_cast<char>((1 << 3) | 2));
  request += static_cast<char>(service.size());
  request += service;
  grpc::Slice slice(request);
  grpc::ByteBuffer buffer(&slice, 1);

  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  auto call = stub.PrepareUnaryCall(&ctx, "/grpc.health.v1.Health/Check", buffer, &cq);
  call->StartCall();
  grpc::ByteBuffer response;
  grpc::Status status;
  int tag = 0;
  call->Finish(&response, &status, &tag);
  void* got = nullptr;
  bool ok = false;
  while (cq.Next(&got, &ok) && got != &tag) {
  }
  cq.Shutdown();
  while (cq.Next(&got, &ok)) {
  }
  if (status.error_code() == grpc::StatusCode::NOT_FOUND) return ServingStatus::kServiceUnknown;
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  }
  std::vector<grpc::Slice> slices;
  (void)response.Dump(&slices);
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  // An empty message is status 0 (UNKNOWN); else field 1 as a one-byte varint.
  if (bytes.size() >= 2 && bytes[0] == 0x08 && bytes[1] >= 0 && bytes[1] <= 3) {
    return static_cast<ServingStatus>(bytes[1]);
  }
  return ServingStatus::kUnknown;
}

}  // namespace kvshare::runtime
