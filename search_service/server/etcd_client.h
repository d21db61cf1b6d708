// EtcdClient: the few etcd v3 calls the control plane needs (range, put, delete, transactions,
// leases, watches), spoken to etcd's JSON gateway over HTTP (/v3/kv/range, /v3/kv/txn,
// /v3/lease/grant, /v3/watch, ...; keys and values base64, 64-bit numbers as strings).
//
// Why the gateway and not gRPC with etcd's protos: etcd 3.4 (Debian's etcd-server) serves the
// gateway on its client port by default; it carries the same v3 semantics (linearizable
// reads, compare-and-swap transactions, leases, revision-ordered watches); and it needs no
// vendored copy of etcd's .proto files and their gogoproto/googleapis imports in the build —
// cpp-httplib and nlohmann-json are already Debian packages. The cost is JSON encoding
// (microseconds beside etcd's fsync per write) and one HTTP connection per call.
//
// Endpoints: a call goes to the endpoint that last answered; when it cannot be reached (or
// answers UNAVAILABLE, e.g. a member cut off from its cluster), the call is tried on the
// next, once around the list. Errors are absl::Status naming the call, the key and the
// endpoints: UNAVAILABLE when no endpoint answered; otherwise the code etcd's gateway gave
// (its codes are gRPC's, which absl shares).
//
// Thread-safe: every call uses its own connection. Watches run on their own thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace kvshare {

// "etcd://HOST:PORT[,HOST:PORT...]/PREFIX" split up. The prefix keeps its leading '/' and loses
// a trailing one ("/kvshare"); it may not be empty: every key of the service lives under it.
struct EtcdTarget {
  std::vector<std::string> endpoints;  // "host:port"
  std::string prefix;
};
// InvalidArgument naming `flag` and what is wrong.
absl::StatusOr<EtcdTarget> ParseEtcdUrl(const std::string& url, const std::string& flag);

struct EtcdKeyValue {
  std::string key, value;
  int64_t create_revision = 0, mod_revision = 0, version = 0, lease = 0;
};

struct EtcdRange {
  std::vector<EtcdKeyValue> kvs;  // ordered by key
  int64_t revision = 0;           // the store's revision the read saw
};

// One comparison of a transaction. A key that does not exist compares as revisions 0.
struct EtcdCompare {
  enum Target { kVersion, kCreateRevision, kModRevision, kValue };
  enum Result { kEqual, kNotEqual, kGreater, kLess };
  std::string key;
  Target target = kModRevision;
  Result result = kEqual;
  int64_t number = 0;
  std::string value;

  static EtcdCompare ModRevisionIs(std::string key, int64_t revision);
  static EtcdCompare Absent(std::string key);  // create_revision == 0
  static EtcdCompare ValueIs(std::string key, std::string value);
};

struct EtcdOp {
  enum Kind { kPut, kGet, kDelete };
  Kind kind = kGet;
  std::string key, range_end, value;
  int64_t lease = 0;

  static EtcdOp Put(std::string key, std::string value, int64_t lease = 0);
  static EtcdOp Get(std::string key);
  static EtcdOp GetPrefix(const std::string& prefix);
  static EtcdOp Delete(std::string key);
};

struct EtcdTxnResult {
  bool succeeded = false;
  int64_t revision = 0;  // after the transaction
  // The answer of each kGet of the branch taken, in order.
  std::vector<EtcdRange> gets;
};

struct EtcdEvent {
  bool deleted = false;
  EtcdKeyValue kv;  // a delete carries only key and mod_revision
};

// What a watch delivers: events in revision order, or `resync` when etcd compacted away
// revisions the watch had not seen (the watcher must read the keys afresh).
struct EtcdWatchBatch {
  std::vector<EtcdEvent> events;
  bool resync = false;
  int64_t revision = 0;
};

class EtcdWatch;

struct EtcdClientOptions {
  absl::Duration connect_timeout = absl::Seconds(1);
  absl::Duration request_timeout = absl::Seconds(5);
};

class EtcdClient {
 public:
  explicit EtcdClient(std::vector<std::string> endpoints, EtcdClientOptions options = {});

  const std::vector<std::string>& endpoints() const { return endpoints_; }

  absl::StatusOr<EtcdRange> Get(const std::string& key) const;
  absl::StatusOr<EtcdRange> GetPrefix(const std::string& prefix) const;
  // Keys in [key, range_end).
  absl::StatusOr<EtcdRange> Range(const std::string& key, const std::string& range_end) const;
  // The revision of the write.
  absl::StatusOr<int64_t> Put(const std::string& key, const std::string& value,
                              int64_t lease = 0) const;
  // The number of keys deleted under `prefix`.
  absl::StatusOr<int64_t> DeletePrefix(const std::string& prefix) const;
  absl::StatusOr<EtcdTxnResult> Txn(const std::vector<EtcdCompare>& compares,
                                    const std::vector<EtcdOp>& success,
                                    const std::vector<EtcdOp>& failure) const;

  // A lease of `ttl` (whole seconds, at least 1); its id.
  absl::StatusOr<int64_t> GrantLease(absl::Duration ttl) const;
  // Refreshes a lease; the TTL it has again. NotFound when it expired or was revoked.
  absl::StatusOr<absl::Duration> KeepAlive(int64_t lease) const;
  absl::Status RevokeLease(int64_t lease) const;

  // Watches keys under `prefix` from `start_revision` (inclusive) on its own thread, calling
  // `on_batch` there for each batch. A broken stream is reopened from the revision after the
  // last delivered one (so nothing is missed or repeated) every `retry` until it works.
  // Watching stops when the returned handle is destroyed.
  std::unique_ptr<EtcdWatch> Watch(const std::string& prefix, int64_t start_revision,
                                   std::function<void(const EtcdWatchBatch&)> on_batch,
                                   absl::Duration retry = absl::Milliseconds(200)) const;

  // The first key after every key that starts with `prefix` (etcd's range_end for a prefix).
  static std::string PrefixEnd(const std::string& prefix);

 private:
  friend class EtcdWatch;
  // POSTs `body` to `path` on the endpoints in turn; the JSON answer's text. `what` names the
  // call in errors ("range /kvshare/x").
  absl::StatusOr<std::string> Call(const std::string& path, const std::string& body,
                                   const std::string& what) const;

  const std::vector<std::string> endpoints_;
  const EtcdClientOptions options_;
  mutable std::atomic<size_t> preferred_{0};
};

// A running watch (EtcdClient::Watch). Destruction stops it and waits for its thread; the
// callback is not called after that.
class EtcdWatch {
 public:
  ~EtcdWatch();

 private:
  friend class EtcdClient;
  EtcdWatch() = default;
  void Run(const EtcdClient* client, std::string prefix, int64_t start_revision,
           std::function<void(const EtcdWatchBatch&)> on_batch, absl::Duration retry);

  std::atomic<bool> stop_{false};
  absl::Mutex mu_;
  void* active_ ABSL_GUARDED_BY(mu_) = nullptr;  // the httplib::Client of the open stream
  std::thread thread_;
};

}  // namespace kvshare
