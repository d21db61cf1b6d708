#include "search_service/server/etcd_client.h"

#include <httplib.h>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"

namespace kvshare {
namespace {

using json = nlohmann::json;

constexpr size_t kShownChars = 80;

std::string Shown(const std::string& s) {
  return s.size() <= kShownChars ? s : s.substr(0, kShownChars) + "...";
}

std::string B64(const std::string& s) { return absl::Base64Escape(s); }

// The gateway writes 64-bit numbers as strings and leaves out zero values.
int64_t Int(const json& j, const char* field) {
  auto it = j.find(field);
  if (it == j.end()) return 0;
  if (it->is_number_integer()) return it->get<int64_t>();
  int64_t v = 0;
  if (it->is_string() && absl::SimpleAtoi(it->get<std::string>(), &v)) return v;
  return 0;
}

std::string Bytes(const json& j, const char* field) {
  auto it = j.find(field);
  if (it == j.end() || !it->is_string()) return "";
  std::string out;
  if (!absl::Base64Unescape(it->get<std::string>(), &out)) return "";
  return out;
}

EtcdKeyValue ParseKv(const json& j) {
  EtcdKeyValue kv;
  kv.key = Bytes(j, "key");
  kv.value = Bytes(j, "value");
  kv.create_revision = Int(j, "create_revision");
  kv.mod_revision = Int(j, "mod_revision");
  kv.version = Int(j, "version");
  kv.lease = Int(j, "lease");
  return kv;
}

EtcdRange ParseRange(const json& j) {
  EtcdRange r;
  if (auto h = j.find("header"); h != j.end() && h->is_object()) r.revision = Int(*h, "revision");
  if (auto kvs = j.find("kvs"); kvs != j.end() && kvs->is_array()) {
    for (const json& kv : *kvs) r.kvs.push_back(ParseKv(kv));
  }
  return r;
}

json RangeRequest(const std::string& key, const std::string& range_end) {
  json j = {{"key", B64(key)}};
  if (!range_end.empty()) j["range_end"] = B64(range_end);
  return j;
}

json OpJson(const EtcdOp& op) {
  switch (op.kind) {
    case EtcdOp::kPut: {
      json put = {{"key", B64(op.key)}, {"value", B64(op.value)}};
      if (op.lease != 0) put["lease"] = std::to_string(op.lease);
      return {{"request_put", put}};
    }
    case EtcdOp::kDelete:
      return {{"request_delete_range", RangeRequest(op.key, op.range_end)}};
    case EtcdOp::kGet:
      break;
  }
  return {{"request_range", RangeRequest(op.key, op.range_end)}};
}

json CompareJson(const EtcdCompare& c) {
  static const char* kTargets[] = {"VERSION", "CREATE", "MOD", "VALUE"};
  static const char* kResults[] = {"EQUAL", "NOT_EQUAL", "GREATER", "LESS"};
  json j = {{"key", B64(c.key)}, {"target", kTargets[c.target]}, {"result", kResults[c.result]}};
  switch (c.target) {
    case EtcdCompare::kVersion:
      j["version"] = std::to_string(c.number);
      break;
    case EtcdCompare::kCreateRevision:
      j["create_revision"] = std::to_string(c.number);
      break;
    case EtcdCompare::kModRevision:
      j["mod_revision"] = std::to_string(c.number);
      break;
    case EtcdCompare::kValue:
      j["value"] = B64(c.value);
      break;
  }
  return j;
}

// etcd's gateway answers errors as {"error": ..., "code": <gRPC code>, "message": ...}.
absl::Status GatewayError(int http_status, const std::string& body, const std::string& what,
                          const std::string& endpoint) {
  const json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  int code = static_cast<int>(absl::StatusCode::kUnknown);
  std::string message = Shown(body);
  if (j.is_object()) {
    if (auto c = j.find("code"); c != j.end() && c->is_number_integer()) code = c->get<int>();
    if (auto m = j.find("message"); m != j.end() && m->is_string()) message = m->get<std::string>();
  }
  if (code <= 0 || code > 16) code = static_cast<int>(absl::StatusCode::kUnknown);
  return absl::Status(
      static_cast<absl::StatusCode>(code),
      absl::StrFormat("etcd %s at %s: HTTP %d: %s", what, endpoint, http_status, message));
}

bool SplitHostPort(const std::string& endpoint, std::string* host, int* port) {
  const size_t colon = endpoint.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  *host = endpoint.substr(0, colon);
  return absl::SimpleAtoi(endpoint.substr(colon + 1), port) && *port > 0 && *port < 65536;
}

void SetTimeouts(httplib::Client& client, absl::Duration connect, absl::Duration read) {
  const int64_t connect_us = absl::ToInt64Microseconds(connect);
  const int64_t read_us = absl::ToInt64Microseconds(read);
  client.set_connection_timeout(connect_us / 1000000, connect_us % 1000000);
  client.set_read_timeout(read_us / 1000000, read_us % 1000000);
  client.set_write_timeout(read_us / 1000000, read_us % 1000000);
}

}  // namespace

absl::StatusOr<EtcdTarget> ParseEtcdUrl(const std::string& url, const std::string& flag) {
  absl::string_view rest = url;
  if (!absl::ConsumePrefix(&rest, "etcd://")) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s \"%s\" is not etcd://HOST:PORT[,HOST:PORT...]/PREFIX", flag, Shown(url)));
  }
  const size_t slash = rest.find('/');
  EtcdTarget target;
  target.prefix = slash == absl::string_view::npos ? "" : std::string(rest.substr(slash));
  while (target.prefix.size() > 1 && target.prefix.back() == '/') target.prefix.pop_back();
  if (target.prefix.size() < 2) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s \"%s\" has no key prefix (etcd://HOST:PORT/PREFIX, e.g. /kvshare)", flag, Shown(url)));
  }
  for (absl::string_view e : absl::StrSplit(rest.substr(0, slash), ',')) {
    std::string host;
    int port = 0;
    if (!SplitHostPort(std::string(e), &host, &port)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s \"%s\": endpoint \"%s\" is not HOST:PORT", flag, Shown(url), Shown(std::string(e))));
    }
    target.endpoints.emplace_back(e);
  }
  return target;
}

EtcdCompare EtcdCompare::ModRevisionIs(std::string key, int64_t revision) {
  EtcdCompare c;
  c.key = std::move(key);
  c.target = kModRevision;
  c.number = revision;
  return c;
}

EtcdCompare EtcdCompare::Absent(std::string key) {
  EtcdCompare c;
  c.key = std::move(key);
  c.target = kCreateRevision;
  c.number = 0;
  return c;
}

EtcdCompare EtcdCompare::ValueIs(std::string key, std::string value) {
  EtcdCompare c;
  c.key = std::move(key);
  c.target = kValue;
  c.value = std::move(value);
  return c;
}

EtcdOp EtcdOp::Put(std::string key, std::string value, int64_t lease) {
  EtcdOp op;
  op.kind = kPut;
  op.key = std::move(key);
  op.value = std::move(value);
  op.lease = lease;
  return op;
}

EtcdOp EtcdOp::Get(std::string key) {
  EtcdOp op;
  op.key = std::move(key);
  return op;
}

EtcdOp EtcdOp::GetPrefix(const std::string& prefix) {
  EtcdOp op;
  op.key = prefix;
  op.range_end = EtcdClient::PrefixEnd(prefix);
  return op;
}

EtcdOp EtcdOp::Delete(std::string key) {
  EtcdOp op;
  op.kind = kDelete;
  op.key = std::move(key);
  return op;
}

EtcdClient::EtcdClient(std::vector<std::string> endpoints, EtcdClientOptions options)
    : endpoints_(std::move(endpoints)), options_(options) {}

std::string EtcdClient::PrefixEnd(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    if (static_cast<unsigned char>(end.back()) < 0xff) {
      end.back() = static_cast<char>(static_cast<unsigned char>(end.back()) + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // every key
}

absl::StatusOr<std::string> EtcdClient::Call(const std::string& path, const std::string& body,
                                             const std::string& what) const {
  if (endpoints_.empty()) {
    return absl::FailedPreconditionError(absl::StrFormat("etcd %s: no endpoints", what));
  }
  const size_t first = preferred_.load();
  std::vector<std::string> failures;
  for (size_t i = 0; i < endpoints_.size(); ++i) {
    const size_t at = (first + i) % endpoints_.size();
    const std::string& endpoint = endpoints_[at];
    std::string host;
    int port = 0;
    if (!SplitHostPort(endpoint, &host, &port)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("etcd endpoint \"%s\" is not HOST:PORT", endpoint));
    }
    httplib::Client client(host, port);
    SetTimeouts(client, options_.connect_timeout, options_.request_timeout);
    httplib::Result res = client.Post(path.c_str(), body, "application/json");
    if (!res) {
      failures.push_back(absl::StrFormat("%s: %s", endpoint, httplib::to_string(res.error())));
      continue;
    }
    if (res->status == 200) {
      preferred_.store(at);
      return std::move(res->body);
    }
    absl::Status s = GatewayError(res->status, res->body, what, endpoint);
    // A member that lost its cluster says UNAVAILABLE; another member may still answer.
    if (absl::IsUnavailable(s)) {
      failures.push_back(std::string(s.message()));
      continue;
    }
    preferred_.store(at);
    return s;
  }
  return absl::UnavailableError(
      absl::StrFormat("etcd %s: no endpoint answered (%s)", what, absl::StrJoin(failures, "; ")));
}

absl::StatusOr<EtcdRange> EtcdClient::Get(const std::string& key) const { return Range(key, ""); }

absl::StatusOr<EtcdRange> EtcdClient::GetPrefix(const std::string& prefix) const {
  return Range(prefix, PrefixEnd(prefix));
}

absl::StatusOr<EtcdRange> EtcdClient::Range(const std::string& key,
                                            const std::string& range_end) const {
  auto body = Call("/v3/kv/range", RangeRequest(key, range_end).dump(), "range " + Shown(key));
  if (!body.ok()) return body.status();
  const json j = json::parse(*body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) {
    return absl::InternalError(absl::StrFormat("etcd range %s: answer is not JSON", Shown(key)));
  }
  return ParseRange(j);
}

absl::StatusOr<int64_t> EtcdClient::Put(const std::string& key, const std::string& value,
                                        int64_t lease) const {
  auto r = Txn({}, {EtcdOp::Put(key, value, lease)}, {});
  if (!r.ok()) return r.status();
  return r->revision;
}

absl::StatusOr<int64_t> EtcdClient::DeletePrefix(const std::string& prefix) const {
  auto body = Call("/v3/kv/deleterange", RangeRequest(prefix, PrefixEnd(prefix)).dump(),
                   "delete " + Shown(prefix));
  if (!body.ok()) return body.status();
  const json j = json::parse(*body, nullptr, /*allow_exceptions=*/false);
  return j.is_object() ? Int(j, "deleted") : 0;
}

absl::StatusOr<EtcdTxnResult> EtcdClient::Txn(const std::vector<EtcdCompare>& compares,
                                              const std::vector<EtcdOp>& success,
                                              const std::vector<EtcdOp>& failure) const {
  json req = json::object();
  std::string what = "txn";
  for (const EtcdCompare& c : compares) req["compare"].push_back(CompareJson(c));
  for (const EtcdOp& op : success) req["success"].push_back(OpJson(op));
  for (const EtcdOp& op : failure) req["failure"].push_back(OpJson(op));
  if (!success.empty()) what += " on " + Shown(success.front().key);
  auto body = Call("/v3/kv/txn", req.dump(), what);
  if (!body.ok()) return body.status();
  const json j = json::parse(*body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) {
    return absl::InternalError(absl::StrFormat("etcd %s: answer is not JSON", what));
  }
  EtcdTxnResult out;
  out.succeeded = j.value("succeeded", false);
  if (auto h = j.find("header"); h != j.end() && h->is_object()) out.revision = Int(*h, "revision");
  if (auto rs = j.find("responses"); rs != j.end() && rs->is_array()) {
    for (const json& r : *rs) {
      if (auto range = r.find("response_range"); range != r.end()) {
        out.gets.push_back(ParseRange(*range));
      }
    }
  }
  return out;
}

absl::StatusOr<int64_t> EtcdClient::GrantLease(absl::Duration ttl) const {
  const int64_t seconds = std::max<int64_t>(1, absl::ToInt64Seconds(ttl));
  auto body = Call("/v3/lease/grant", json{{"TTL", std::to_string(seconds)}}.dump(), "lease grant");
  if (!body.ok()) return body.status();
  const json j = json::parse(*body, nullptr, /*allow_exceptions=*/false);
  const int64_t id = j.is_object() ? Int(j, "ID") : 0;
  if (id == 0) {
    return absl::InternalError(
        absl::StrFormat("etcd lease grant: no lease id in %s", Shown(*body)));
  }
  return id;
}

absl::StatusOr<absl::Duration> EtcdClient::KeepAlive(int64_t lease) const {
  const std::string what = absl::StrFormat("lease keepalive %d", lease);
  auto body = Call("/v3/lease/keepalive", json{{"ID", std::to_string(lease)}}.dump(), what);
  if (!body.ok()) return body.status();
  // A stream of one answer: {"result": {"ID": ..., "TTL": ...}}; no TTL: the lease is gone.
  const json j = json::parse(*body, nullptr, /*allow_exceptions=*/false);
  const int64_t ttl = j.is_object() && j.contains("result") && j["result"].is_object()
                          ? Int(j["result"], "TTL")
                          : 0;
  if (ttl <= 0) {
    return absl::NotFoundError(absl::StrFormat("etcd %s: the lease expired or was revoked", what));
  }
  return absl::Seconds(ttl);
}

absl::Status EtcdClient::RevokeLease(int64_t lease) const {
  auto body = Call("/v3/lease/revoke", json{{"ID", std::to_string(lease)}}.dump(),
                   absl::StrFormat("lease revoke %d", lease));
  return body.status();
}

std::unique_ptr<EtcdWatch> EtcdClient::Watch(const std::string& prefix, int64_t start_revision,
                                             std::function<void(const EtcdWatchBatch&)> on_batch,
                                             absl::Duration retry) const {
  std::unique_ptr<EtcdWatch> w(new EtcdWatch());
  w->thread_ = std::thread(&EtcdWatch::Run, w.get(), this, prefix, start_revision,
                           std::move(on_batch), retry);
  return w;
}

EtcdWatch::~EtcdWatch() {
  stop_ = true;
  {
    absl::MutexLock lock(&mu_);
    if (active_ != nullptr) static_cast<httplib::Client*>(active_)->stop();
  }
  if (thread_.joinable()) thread_.join();
}

void EtcdWatch::Run(const EtcdClient* client, std::string prefix, int64_t start_revision,
                    std::function<void(const EtcdWatchBatch&)> on_batch, absl::Duration retry) {
  int64_t next = start_revision;
  size_t endpoint = client->preferred_.load();
  while (!stop_) {
    std::string host;
    int port = 0;
    const std::string& e = client->endpoints_[endpoint % client->endpoints_.size()];
    if (!SplitHostPort(e, &host, &port)) return;
    httplib::Client http(host, port);
    // Quiet watches are reopened after this long; that is cheap and bounds a silent hang.
    SetTimeouts(http, client->options_.connect_timeout, absl::Seconds(60));
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
      active_ = &http;
    }
    json create = RangeRequest(prefix, EtcdClient::PrefixEnd(prefix));
    create["start_revision"] = std::to_string(next);
    httplib::Request req;
    req.method = "POST";
    req.path = "/v3/watch";
    req.body = json{{"create_request", create}}.dump();
    req.set_header("Content-Type", "application/json");
    std::string buffer;
    bool delivered_any = false;
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
      if (stop_) return false;
      buffer.append(data, n);
      size_t nl;
      while ((nl = buffer.find('\n')) != std::string::npos) {
        const json j = json::parse(buffer.substr(0, nl), nullptr, /*allow_exceptions=*/false);
        buffer.erase(0, nl + 1);
        if (!j.is_object() || !j.contains("result") || !j["result"].is_object()) {
          return false;  // an error: reopen
        }
        const json& r = j["result"];
        EtcdWatchBatch batch;
        if (auto h = r.find("header"); h != r.end() && h->is_object()) {
          batch.revision = Int(*h, "revision");
        }
        if (const int64_t compacted = Int(r, "compact_revision"); compacted > 0) {
          // Revisions before it are gone: the watcher re-reads; watching goes on from there.
          batch.resync = true;
          next = std::max(next, compacted);
          on_batch(batch);
          return false;
        }
        if (r.value("canceled", false)) return false;
        if (auto evs = r.find("events"); evs != r.end() && evs->is_array()) {
          for (const json& ev : *evs) {
            EtcdEvent event;
            event.deleted = ev.value("type", "") == "DELETE";
            if (ev.contains("kv")) event.kv = ParseKv(ev["kv"]);
            next = std::max(next, event.kv.mod_revision + 1);
            batch.events.push_back(std::move(event));
          }
        }
        if (!batch.events.empty()) {
          delivered_any = true;
          on_batch(batch);
        }
      }
      return !stop_;
    };
    http.send(req);
    {
      absl::MutexLock lock(&mu_);
      active_ = nullptr;
    }
    if (stop_) return;
    if (!delivered_any) ++endpoint;  // this endpoint may be the broken one
    // Sleep in small pieces so that destruction is prompt.
    const absl::Time until = absl::Now() + retry;
    while (!stop_ && absl::Now() < until) absl::SleepFor(absl::Milliseconds(20));
  }
}

}  // namespace kvshare
