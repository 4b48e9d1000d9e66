//! The SDK on the host target: the macro leaves a plain function, and the
//! testing helpers run it through the codec the WASM ABIs use.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use wpool_guest::testing::{self, Captured};
use wpool_guest::{Failure, task};

#[derive(Debug, Deserialize)]
struct In {
    text: String,
}

#[derive(Debug, PartialEq, Serialize)]
struct Out {
    words: usize,
}

/// Counts words; fails on empty text.
#[task]
fn count(input: In) -> Result<Out, String> {
    wpool_guest::log("counting");
    wpool_guest::progress(1, 1);
    if input.text.is_empty() {
        return Err("nothing to count".to_string());
    }
    Ok(Out {
        words: input.text.split_whitespace().count(),
    })
}

#[test]
fn the_task_stays_a_plain_function() {
    let out = count(In {
        text: "one two three".into(),
    });
    assert_eq!(out, Ok(Out { words: 3 }));
}

#[test]
fn json_in_json_out() {
    let out = testing::run_json(count, r#"{"text": "a b"}"#);
    assert_eq!(out, Ok(r#"{"words":2}"#.to_string()));
}

#[test]
fn unknown_fields_are_ignored_as_serde_does_by_default() {
    let out = testing::run_json(count, r#"{"text": "a", "extra": [1, 2]}"#);
    assert_eq!(out, Ok(r#"{"words":1}"#.to_string()));
}

#[test]
fn an_err_is_a_task_failure_with_the_display_text_unchanged() {
    let failure = testing::run_json(count, r#"{"text": ""}"#).unwrap_err();
    assert_eq!(failure, Failure::Task("nothing to count".into()));
    assert_eq!(failure.exit_code(), 1);
    assert_eq!(failure.to_string(), "nothing to count");
}

#[test]
fn input_of_the_wrong_shape_names_the_type_and_serdes_error() {
    let failure = testing::run_json(count, r#"{"txt": "a"}"#).unwrap_err();
    assert!(matches!(failure, Failure::Input(_)), "{failure:?}");
    assert_eq!(failure.exit_code(), 2);
    let message = failure.message();
    assert!(
        message.starts_with("invalid input: expected JSON for `"),
        "{message}"
    );
    assert!(message.contains("::In`"), "{message}");
    assert!(message.contains("missing field `text`"), "{message}");
}

#[test]
fn input_that_is_not_json_is_an_input_failure() {
    for input in ["", "text", "{\"text\": \"a\"", "\u{feff}{}"] {
        let failure = testing::run_json(count, input).unwrap_err();
        assert_eq!(failure.exit_code(), 2, "{input:?}: {failure}");
    }
}

#[test]
fn the_task_does_not_run_when_the_input_is_invalid() {
    let (_, seen) = testing::capture(|| testing::run_json(count, "[]"));
    assert_eq!(seen, Captured::default());
}

#[derive(Serialize)]
struct Unencodable {
    // serde_json cannot write a map whose keys are not strings.
    by_pair: HashMap<(u8, u8), u32>,
}

#[task]
fn unencodable(_input: ()) -> Result<Unencodable, String> {
    Ok(Unencodable {
        by_pair: HashMap::from([((1, 2), 3)]),
    })
}

#[test]
fn an_output_that_does_not_encode_is_an_output_failure() {
    let failure = testing::run_json(unencodable, "null").unwrap_err();
    assert!(matches!(failure, Failure::Output(_)), "{failure:?}");
    assert_eq!(failure.exit_code(), 3);
    assert!(failure.message().contains("Unencodable"), "{failure}");
}

/// An error type of the author's own.
#[derive(Debug)]
struct TooLong {
    len: usize,
}

impl fmt::Display for TooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes is too long", self.len)
    }
}

#[task]
fn short(input: String) -> Result<usize, TooLong> {
    match input.len() {
        len if len > 3 => Err(TooLong { len }),
        len => Ok(len),
    }
}

#[test]
fn any_display_error_becomes_the_message() {
    assert_eq!(testing::run_json(short, r#""abc""#), Ok("3".into()));
    assert_eq!(
        testing::run_json(short, r#""abcdef""#),
        Err(Failure::Task("6 bytes is too long".into()))
    );
}

#[task]
fn via_alias(input: Vec<u32>) -> std::io::Result<u32> {
    input
        .iter()
        .copied()
        .max()
        .ok_or_else(|| std::io::Error::other("empty list"))
}

#[test]
fn a_result_alias_is_accepted() {
    assert_eq!(testing::run_json(via_alias, "[3, 9, 2]"), Ok("9".into()));
    assert_eq!(
        testing::run_json(via_alias, "[]"),
        Err(Failure::Task("empty list".into()))
    );
}

#[task(raw)]
fn reverse(input: Vec<u8>) -> Result<Vec<u8>, String> {
    Ok(input.into_iter().rev().collect())
}

#[test]
fn raw_bytes_pass_through_untouched() {
    let bytes = vec![0xff, 0x00, b'{', 0x80];
    assert_eq!(
        testing::run_raw(reverse, bytes),
        Ok(vec![0x80, b'{', 0x00, 0xff])
    );
    assert_eq!(testing::run_raw(reverse, ""), Ok(vec![]));
}

#[task(raw)]
fn shout(input: String) -> Result<String, &'static str> {
    if input.is_empty() {
        return Err("say something");
    }
    Ok(input.to_uppercase())
}

#[test]
fn raw_text_must_be_utf8() {
    assert_eq!(
        testing::run_raw(shout, "héllo"),
        Ok("HÉLLO".as_bytes().to_vec())
    );
    assert_eq!(
        testing::run_raw(shout, ""),
        Err(Failure::Task("say something".into()))
    );
    let failure = testing::run_raw(shout, vec![b'a', 0xff]).unwrap_err();
    assert_eq!(failure.exit_code(), 2);
    assert!(failure.message().contains("UTF-8"), "{failure}");
}

#[test]
fn capture_records_logs_and_progress_in_order() {
    let (out, seen) = testing::capture(|| {
        wpool_guest::progress(0, 2);
        wpool_guest::log("first");
        wpool_guest::progress(2, 2);
        wpool_guest::log("line with\na newline");
        7
    });
    assert_eq!(out, 7);
    assert_eq!(seen.logs, ["first", "line with\na newline"]);
    assert_eq!(seen.progress, [(0, 2), (2, 2)]);
}

#[test]
fn capture_sees_what_a_task_reports_through_the_codec() {
    let (_, seen) = testing::capture(|| testing::run_json(count, r#"{"text": "x"}"#));
    assert_eq!(seen.logs, ["counting"]);
    assert_eq!(seen.progress, [(1, 1)]);
}

#[test]
fn reports_outside_a_capture_are_not_recorded() {
    wpool_guest::log("before");
    let ((), seen) = testing::capture(|| wpool_guest::log("inside"));
    wpool_guest::log("after");
    assert_eq!(seen.logs, ["inside"]);
}

#[test]
fn captures_nest_and_survive_a_panic() {
    let ((), outer) = testing::capture(|| {
        wpool_guest::log("outer 1");
        let ((), inner) = testing::capture(|| wpool_guest::log("inner"));
        assert_eq!(inner.logs, ["inner"]);
        let panicked = std::panic::catch_unwind(|| {
            testing::capture(|| {
                wpool_guest::log("lost");
                panic!("task panicked");
            })
        });
        assert!(panicked.is_err());
        wpool_guest::log("outer 2");
    });
    assert_eq!(outer.logs, ["outer 1", "outer 2"]);
}

#[test]
fn captures_on_other_threads_are_separate() {
    let ((), seen) = testing::capture(|| {
        std::thread::spawn(|| wpool_guest::log("elsewhere"))
            .join()
            .unwrap();
        wpool_guest::log("here");
    });
    assert_eq!(seen.logs, ["here"]);
}
