// polder::Error and the CHECK macros. A failed check throws polder::Error whose message names the offending
// values and carries file:line. The "{}" formatter is a small stand-in for std::format (not in g++ 12).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace polder {

class Error : public std::runtime_error {
 public:
  Error(std::string message, const char* file, int line)
      : std::runtime_error(message), message_(std::move(message)), file_(file), line_(line) {}
  // The user-facing message without the source location.
  const std::string& message() const { return message_; }
  const char* file() const { return file_; }
  int line() const { return line_; }

 private:
  std::string message_;
  const char* file_;
  int line_;
};

namespace detail {

template <typename T>
void format_one(std::ostringstream& os, const T& value) {
  if constexpr (requires {
                  value.begin();
                  value.end();
                } &&
                !std::is_convertible_v<T, std::string_view>) {
    os << '(';
    bool first = true;
    for (const auto& v : value) {
      if (!first) os << ", ";
      format_one(os, v);
      first = false;
    }
    os << ')';
  } else if constexpr (std::is_same_v<T, bool>) {
    os << (value ? "true" : "false");
  } else {
    os << value;
  }
}

inline void format_rest(std::ostringstream& os, std::string_view fmt) {
  os << fmt;
}

template <typename T, typename... Rest>
void format_rest(std::ostringstream& os, std::string_view fmt, const T& first, const Rest&... rest) {
  size_t pos = fmt.find("{}");
  if (pos == std::string_view::npos) {
    os << fmt;
    return;
  }
  os << fmt.substr(0, pos);
  format_one(os, first);
  format_rest(os, fmt.substr(pos + 2), rest...);
}

}  // namespace detail

// format("x is {} but y is {}", a, b): each "{}" is replaced by the next value; containers print as (a, b,
// c).
template <typename... Args>
std::string format(std::string_view fmt, const Args&... args) {
  std::ostringstream os;
  detail::format_rest(os, fmt, args...);
  return os.str();
}

[[noreturn]] inline void throw_error(const std::string& message, const char* file, int line) {
  throw Error(message, file, line);
}

}  // namespace polder

#define POLDER_CHECK(cond, ...)                                                            \
  do {                                                                                     \
    if (!(cond)) ::polder::throw_error(::polder::format(__VA_ARGS__), __FILE__, __LINE__); \
  } while (0)

#define POLDER_FAIL(...) ::polder::throw_error(::polder::format(__VA_ARGS__), __FILE__, __LINE__)
