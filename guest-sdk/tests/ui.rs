//! Compile-fail tests: a wrong `#[task]` signature is a clear compile error
//! that shows the expected form. The expected messages are the `.stderr`
//! files beside each case in `tests/ui/`.

#[test]
fn wrong_signatures_do_not_compile() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
