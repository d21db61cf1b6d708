// Speaks grpc.health.v1 and grpc.reflection.v1alpha to a server without their generated code
// (the Debian packages ship neither .proto): a generic stub carrying hand-encoded messages.
// Both messages used here are tiny: HealthCheckRequest{string service = 1} ->
// HealthCheckResponse{ServingStatus status = 1}, and ServerReflectionRequest{string
// list_services = 7} -> a response whose bytes contain the service names.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"

namespace kvshare::testing {

enum class HealthStatus { kUnknown = 0, kServing = 1, kNotServing = 2, kServiceUnknown = 3 };

inline std::string LengthDelimited(int field, const std::string& bytes) {
  std::string out(1, static_cast<char>((field << 3) | 2));
  out += static_cast<char>(bytes.size());  // all strings here are < 128 bytes
  return out + bytes;
}

inline grpc::ByteBuffer ToBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

inline std::string FromBuffer(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  (void)buffer.Dump(&slices);
  std::string out;
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// Waits for `tag` on `cq`; false when the operation failed.
inline bool Await(grpc::CompletionQueue& cq, void* tag) {
  void* got = nullptr;
  bool ok = false;
  while (cq.Next(&got, &ok)) {
    if (got == tag) return ok;
  }
  return false;
}

inline void ShutdownAndDrain(grpc::CompletionQueue& cq) {
  cq.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {
  }
}

// grpc.health.v1.Health/Check for `service` ("" = the whole server).
inline absl::StatusOr<HealthStatus> CheckHealth(const std::shared_ptr<grpc::Channel>& channel,
                                                const std::string& service) {
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  auto call = stub.PrepareUnaryCall(&ctx, "/grpc.health.v1.Health/Check",
                                    ToBuffer(LengthDelimited(1, service)), &cq);
  call->StartCall();
  grpc::ByteBuffer response;
  grpc::Status status;
  int tag = 0;
  call->Finish(&response, &status, &tag);
  Await(cq, &tag);
  ShutdownAndDrain(cq);
  if (status.error_code() == grpc::StatusCode::NOT_FOUND) return HealthStatus::kServiceUnknown;
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  }
  const std::string bytes = FromBuffer(response);
  // An empty message is status 0 (UNKNOWN); else field 1 as a one-byte varint.
  if (bytes.size() >= 2 && bytes[0] == 0x08) return static_cast<HealthStatus>(bytes[1]);
  return HealthStatus::kUnknown;
}

// The raw bytes of the reflection service's answer to list_services.
inline absl::StatusOr<std::string> ListServicesRaw(const std::shared_ptr<grpc::Channel>& channel) {
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  int start = 0, write = 0, read = 0, done = 0, finish = 0;
  auto call =
      stub.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  call->StartCall(&start);
  if (!Await(cq, &start)) return absl::UnavailableError("reflection: call did not start");
  call->Write(ToBuffer(LengthDelimited(7, "")), &write);
  if (!Await(cq, &write)) return absl::UnavailableError("reflection: write failed");
  grpc::ByteBuffer response;
  call->Read(&response, &read);
  const bool got = Await(cq, &read);
  call->WritesDone(&done);
  Await(cq, &done);
  grpc::Status status;
  call->Finish(&status, &finish);
  Await(cq, &finish);
  ShutdownAndDrain(cq);
  if (!got) {
    return absl::UnavailableError("reflection: no answer: " + status.error_message());
  }
  return FromBuffer(response);
}

}  // namespace kvshare::testing
