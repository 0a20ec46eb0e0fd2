#include "catch.hpp"
#include "chunkwise/core/error.hpp"
#include "chunkwise/sched/workload.hpp"

using chunkwise::Error;
using chunkwise::ErrorCode;
using chunkwise::parse_workload;

namespace {
ErrorCode code_of(const std::string& text) {
  try {
    parse_workload(text, "w.jsonl");
  } catch (const Error& e) {
    return e.code();
  }
  FAIL("accepted: " << text);
  return ErrorCode::kBackend;
}
std::string message_of(const std::string& text) {
  try {
    parse_workload(text, "w.jsonl");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("workload lines parse into requests", "[workload]") {
  const auto items = parse_workload(
      "{\"id\": \"a\", \"prompt\": \"hello\", \"max_tokens\": 8, \"arrival_s\": 1.5, \"priority\": 2, "
      "\"chat\": true}\n"
      "\n"
      "{\"id\": \"b\", \"prompt_tokens\": [1, 2, 3], \"max_tokens\": 4, \"temperature\": 0.7, \"top_k\": 20,"
      " \"top_p\": 0.9, \"seed\": 42, \"stop_tokens\": [2]}\n");
  REQUIRE(items.size() == 2);
  CHECK(items[0].request.label == "a");
  CHECK(items[0].request.prompt_text == "hello");
  CHECK(items[0].request.chat);
  CHECK(items[0].request.priority == 2);
  CHECK(items[0].arrival_s == 1.5);
  CHECK(items[1].request.prompt_tokens == std::vector<chunkwise::TokenId>{1, 2, 3});
  CHECK(items[1].request.sampling.top_k == 20);
  CHECK(items[1].request.sampling.seed == 42);
  CHECK(items[1].request.stop_tokens == std::vector<chunkwise::TokenId>{2});
}

TEST_CASE("malformed workload lines are rejected with their line number", "[workload]") {
  CHECK(code_of("{\"id\": \"a\", \"prompt\": \"x\", \"max_tokens\": 0}") == ErrorCode::kInvalidArgument);
  CHECK(code_of("{\"id\": \"a\", \"max_tokens\": 3}") == ErrorCode::kInvalidArgument);
  CHECK(code_of("{\"id\": \"a\", \"prompt\": \"x\", \"prompt_tokens\": [1], \"max_tokens\": 3}") ==
        ErrorCode::kInvalidArgument);
  CHECK(code_of("{\"id\": 5, \"prompt\": \"x\", \"max_tokens\": 3}") == ErrorCode::kInvalidArgument);
  CHECK(code_of("[1, 2]") == ErrorCode::kInvalidArgument);
  CHECK(code_of("{\"id\": \"a\", \"prompt_tokens\": [1, 99999999999], \"max_tokens\": 3}") ==
        ErrorCode::kTokenOutOfRange);
  CHECK(code_of("{\"id\": \"a\", \"prompt\": \"x\", \"max_tokens\": 3, \"top_p\": 0}") ==
        ErrorCode::kInvalidArgument);
  CHECK(code_of("{\"id\": \"a\", \"prompt\": \"x\", \"max_tokens\": 3, \"arrival_s\": -1}") ==
        ErrorCode::kInvalidArgument);
  CHECK(code_of("") == ErrorCode::kInvalidArgument);
  CHECK(
      message_of("{\"id\": \"a\", \"prompt\": \"x\", \"max_tokens\": 3}\n{\"id\": \"a\", \"prompt\": \"y\", "
                 "\"max_tokens\": 3}")
          .find("w.jsonl:2: duplicate id") != std::string::npos);
  CHECK(message_of("{\"id\": \"a\", \"prompt\": \"x\", \"max_tokens\": 3}\n{oops").find("w.jsonl:2") !=
        std::string::npos);
}
