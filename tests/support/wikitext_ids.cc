#include "tests/support/wikitext_ids.h"

#include <string>

#include "common/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/support/test_env.h"

namespace kvshare::testing {

std::vector<int32_t> WikiTextIds(const Model& model, size_t chars, bool add_bos, size_t count) {
  auto tokenizer = LoadTokenizerForModel(model, "");
  if (!tokenizer.ok()) {
    ADD_FAILURE() << tokenizer.status();
    return {};
  }
  const std::string text = ReadFileOrDie(Asset("wikitext-2-raw-test.txt"));
  std::vector<int32_t> ids = (*tokenizer)->Encode(text.substr(0, chars), add_bos);
  if (ids.size() < count) {
    ADD_FAILURE() << "the first " << chars << " characters of WikiText-2 give " << ids.size()
                  << " ids, fewer than " << count;
    return ids;
  }
  ids.resize(count);
  return ids;
}

}  // namespace kvshare::testing
