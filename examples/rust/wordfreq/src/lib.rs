// Build: cargo build --release --target wasm32-wasip1 (or wasm32-wasip2) --manifest-path examples/rust/Cargo.toml -p wordfreq

//! Word frequencies, the task every language's examples implement alike:
//! `{"text": "...", "top": N}` → `{"total": .., "unique": .., "top": [{"word": .., "count": ..}, ..]}`.
//! The exact rules are in `examples/README-wordfreq.md`; in short, a word
//! is a maximal run of ASCII letters and digits, lowercased, and `top`
//! (default 10) lists the most frequent words by count descending, then
//! word ascending.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The task's input.
#[derive(Debug, Deserialize)]
pub struct Input {
    /// The text to count words in.
    pub text: String,
    /// How many of the most frequent words to list.
    #[serde(default = "default_top")]
    pub top: usize,
}

fn default_top() -> usize {
    10
}

/// The task's output.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Output {
    /// The number of words in the text.
    pub total: u64,
    /// The number of distinct words.
    pub unique: u64,
    /// The most frequent words, by count descending, then word ascending.
    pub top: Vec<WordCount>,
}

/// One word and how often it occurs.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct WordCount {
    /// The word, lowercase.
    pub word: String,
    /// How many times it occurs.
    pub count: u64,
}

/// Counts the words of `text` and lists the `top` most frequent.
pub fn word_frequencies(text: &str, top: usize) -> Output {
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut total = 0;
    // Bytes, not chars: every byte of a non-ASCII character is >= 0x80 and
    // so separates words, as does every ASCII byte that is not a letter or
    // a digit.
    for word in text
        .as_bytes()
        .split(|byte| !byte.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
    {
        total += 1;
        // Only ASCII letters and digits: always valid UTF-8.
        let word = String::from_utf8_lossy(word).to_ascii_lowercase();
        *counts.entry(word).or_insert(0) += 1;
    }
    let unique = u64::try_from(counts.len()).unwrap_or(u64::MAX);
    let mut ranked: Vec<WordCount> = counts
        .into_iter()
        .map(|(word, count)| WordCount { word, count })
        .collect();
    ranked.sort_unstable_by(|a, b| b.count.cmp(&a.count).then_with(|| a.word.cmp(&b.word)));
    ranked.truncate(top);
    Output {
        total,
        unique,
        top: ranked,
    }
}

/// Counts the words of `input.text`.
#[wpool_guest::task]
pub fn run(input: Input) -> Result<Output, String> {
    Ok(word_frequencies(&input.text, input.top))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wpool_guest::testing;

    fn top(output: &Output) -> Vec<(&str, u64)> {
        output
            .top
            .iter()
            .map(|w| (w.word.as_str(), w.count))
            .collect()
    }

    #[test]
    fn the_readme_example() {
        let input = r#"{"text": "The cat and the hat. THE END, the end!", "top": 3}"#;
        let output = testing::run_json(run, input).unwrap();
        assert_eq!(
            output,
            r#"{"total":9,"unique":5,"top":[{"word":"the","count":4},{"word":"end","count":2},{"word":"and","count":1}]}"#
        );
    }

    #[test]
    fn ties_go_by_word_ascending_digits_first() {
        let output = word_frequencies("b a c 2 10 b a", 10);
        assert_eq!(
            top(&output),
            [("a", 2), ("b", 2), ("10", 1), ("2", 1), ("c", 1)]
        );
    }

    #[test]
    fn apostrophes_and_non_ascii_separate_words() {
        let output = word_frequencies("don't café naïve x_y über2", 10);
        assert_eq!(output.total, 8);
        assert_eq!(output.unique, 8);
        assert_eq!(
            top(&output),
            [
                ("ber2", 1),
                ("caf", 1),
                ("don", 1),
                ("na", 1),
                ("t", 1),
                ("ve", 1),
                ("x", 1),
                ("y", 1)
            ]
        );
    }

    #[test]
    fn top_defaults_to_ten() {
        let text = "a b c d e f g h i j k l a";
        let output = testing::run_json(run, &format!(r#"{{"text": "{text}"}}"#)).unwrap();
        assert!(
            output.starts_with(
                r#"{"total":13,"unique":12,"top":[{"word":"a","count":2},{"word":"b","count":1}"#
            ),
            "{output}"
        );
        assert!(output.ends_with(r#"{"word":"j","count":1}]}"#), "{output}");
    }

    #[test]
    fn empty_text_and_top_zero() {
        let output = testing::run_json(run, r#"{"text": " ,.!? ", "top": 5}"#).unwrap();
        assert_eq!(output, r#"{"total":0,"unique":0,"top":[]}"#);
        let output = testing::run_json(run, r#"{"text": "Aa aA", "top": 0}"#).unwrap();
        assert_eq!(output, r#"{"total":2,"unique":1,"top":[]}"#);
    }

    #[test]
    fn a_missing_text_is_invalid_input() {
        let failure = testing::run_json(run, r#"{"top": 3}"#).unwrap_err();
        assert_eq!(failure.exit_code(), 2, "{failure}");
    }
}
