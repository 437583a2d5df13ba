// UTF-8 and Unicode helpers for the tokenizers (tables generated from Python's unicodedata).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace peft::tok {

/// Decodes UTF-8 into code points; throws peft::Error naming `what` on invalid input.
std::vector<uint32_t> utf8_decode(const std::string& s, const char* what = "input text");
/// Byte offset of the first invalid UTF-8 sequence, or std::string::npos when valid.
size_t utf8_invalid_at(const std::string& s);
void utf8_append(std::string& out, uint32_t cp);
std::string utf8_encode(const std::vector<uint32_t>& cps);
/// Length of the UTF-8 sequence starting with byte c (1 for invalid lead bytes).
int utf8_len(unsigned char c);
/// Number of trailing bytes of s that form an incomplete (but so far valid) UTF-8 sequence.
size_t utf8_incomplete_tail(const std::string& s);
/// Replaces invalid sequences with U+FFFD (like Rust's String::from_utf8_lossy).
std::string utf8_lossy(const std::string& s);

/// Two-letter general category, e.g. "Lu", "Mn", "Nd"; "Cn" for unassigned.
const char* category(uint32_t cp);
bool is_letter(uint32_t cp);   // \p{L}
bool is_number(uint32_t cp);   // \p{N}
bool is_mark_nonspacing(uint32_t cp);  // Mn
bool is_space(uint32_t cp);    // regex \s (Unicode White_Space)
bool is_punct(uint32_t cp);    // \p{P}
bool is_bert_punct(uint32_t cp);  // BERT: ASCII non-alnum printable or \p{P}
bool is_bert_whitespace(uint32_t cp);
bool is_bert_control(uint32_t cp);
bool is_cjk(uint32_t cp);
uint32_t to_lower(uint32_t cp);
/// Appends the canonical (NFD) decomposition of cp.
void nfd_append(std::vector<uint32_t>& out, uint32_t cp);

}  // namespace peft::tok
