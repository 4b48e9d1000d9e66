//! How a task run fails, the same way on every target.

use std::fmt;

/// Why a task run did not produce output.
///
/// The WASI command ABI turns each kind into its own exit code
/// ([`Failure::exit_code`]); the component ABI returns its message
/// ([`Failure::message`]) as the `err` of `run`; the [`testing`](crate::testing)
/// helpers return it as it is, so a test can tell the kinds apart.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The task function returned `Err(e)`; the message is `e.to_string()`,
    /// unchanged. Exit code 1.
    Task(String),
    /// The input bytes did not decode into the function's input type.
    /// Exit code 2.
    Input(String),
    /// The output could not be encoded, or (command ABI) stdin could not be
    /// read or stdout could not be written. Exit code 3.
    Output(String),
}

impl Failure {
    /// The exit code a WASI command module ends with for this failure:
    /// 1 for [`Failure::Task`], 2 for [`Failure::Input`], 3 for
    /// [`Failure::Output`].
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Task(_) => 1,
            Failure::Input(_) => 2,
            Failure::Output(_) => 3,
        }
    }

    /// The message the host records as the task's error: for
    /// [`Failure::Task`] exactly the `Display` of the function's error.
    pub fn message(&self) -> &str {
        match self {
            Failure::Task(m) | Failure::Input(m) | Failure::Output(m) => m,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Failure {}
