// kvshare.v1.SearchService on the gRPC callback API, over a SearchJobRunner (which does the
// work; this is the wire). WatchSearchJob is one reactor per stream: it writes the job's newest
// snapshot whenever the job changes and no write is in flight (a slow reader gets fewer
// snapshots, in order, and always the last), then finishes after the terminal one.
//
// The runner must outlive the gRPC server the service is registered with. Thread-safe.
#pragma once

#include <atomic>

#include "kvshare/v1/search.grpc.pb.h"
#include "search_service/server/search_job_runner.h"

namespace kvshare {

class SearchJobService final : public v1::SearchService::CallbackService {
 public:
  explicit SearchJobService(SearchJobRunner* runner) : runner_(runner) {}

  grpc::ServerUnaryReactor* CreateSearchJob(grpc::CallbackServerContext* context,
                                            const v1::CreateSearchJobRequest* request,
                                            v1::SearchJob* response) override;
  grpc::ServerUnaryReactor* GetSearchJob(grpc::CallbackServerContext* context,
                                         const v1::GetSearchJobRequest* request,
                                         v1::SearchJob* response) override;
  grpc::ServerWriteReactor<v1::SearchJobUpdate>* WatchSearchJob(
      grpc::CallbackServerContext* context, const v1::WatchSearchJobRequest* request) override;
  grpc::ServerUnaryReactor* CancelSearchJob(grpc::CallbackServerContext* context,
                                            const v1::CancelSearchJobRequest* request,
                                            v1::SearchJob* response) override;
  grpc::ServerUnaryReactor* ListSearchJobs(grpc::CallbackServerContext* context,
                                           const v1::ListSearchJobsRequest* request,
                                           v1::ListSearchJobsResponse* response) override;

 private:
  SearchJobRunner* const runner_;
};

}  // namespace kvshare
