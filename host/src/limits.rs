//! Per-task limits and their pool-wide defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The limits a task runs under. Every field has a pool-wide default
/// ([`Limits::default`], or the executor's configuration); a task may
/// override any of them with [`LimitOverrides`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock time from the start of instantiation to the end of the
    /// run. Past it the task is killed and its outcome is
    /// [`Outcome::Timeout`](crate::Outcome::Timeout). Default: 30 s.
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
    /// Fuel budget (roughly, wasm instructions executed). Past it the task
    /// traps with [`Outcome::OutOfFuel`](crate::Outcome::OutOfFuel). `None`
    /// means unlimited (fuel is still counted when the engine meters it).
    /// Default: `None`.
    pub fuel: Option<u64>,
    /// Maximum linear memory, in bytes, summed over the task's memories.
    /// A `memory.grow` past it fails; a task that then fails ends with
    /// [`Outcome::MemoryLimit`](crate::Outcome::MemoryLimit). Default: 128 MiB.
    pub memory: u64,
    /// Maximum output size in bytes. A task writing more is stopped with
    /// [`Outcome::OutputTooLarge`](crate::Outcome::OutputTooLarge); the host
    /// never buffers more than this. Default: 16 MiB.
    pub max_output: u64,
    /// How much of the task's log (stderr and `log` calls) is kept: its
    /// last `max_log` bytes. Writing more never fails the task. Default, and
    /// the most allowed ([`MAX_LOG`]): 64 KiB.
    pub max_log: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            fuel: None,
            memory: 128 << 20,
            max_output: 16 << 20,
            max_log: 64 << 10,
        }
    }
}

/// The longest timeout a task may ask for: one week.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// The largest output a task may be allowed: 1 GiB.
pub const MAX_OUTPUT: u64 = 1 << 30;

/// The largest log tail a task may keep: 64 KiB, the default. A log is a
/// tail for people to read, kept in its task's record (unlike large inputs
/// and outputs, which go to files), and its bound keeps records small:
/// write bulky diagnostics to the output instead.
pub const MAX_LOG: u64 = 64 << 10;

/// Per-task overrides of the pool's default [`Limits`]; `None` keeps the
/// default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitOverrides {
    /// See [`Limits::timeout`].
    #[serde(default, with = "opt_duration_ms")]
    pub timeout: Option<Duration>,
    /// See [`Limits::fuel`].
    #[serde(default)]
    pub fuel: Option<u64>,
    /// See [`Limits::memory`].
    #[serde(default)]
    pub memory: Option<u64>,
    /// See [`Limits::max_output`].
    #[serde(default)]
    pub max_output: Option<u64>,
    /// See [`Limits::max_log`].
    #[serde(default)]
    pub max_log: Option<u64>,
}

impl Limits {
    /// Applies `overrides` over these defaults and checks the result
    /// against the engine's ceiling for memory (`max_memory`).
    pub fn with_overrides(&self, overrides: &LimitOverrides, max_memory: u64) -> Result<Limits> {
        let limits = Limits {
            timeout: overrides.timeout.unwrap_or(self.timeout),
            fuel: overrides.fuel.or(self.fuel),
            memory: overrides.memory.unwrap_or(self.memory),
            max_output: overrides.max_output.unwrap_or(self.max_output),
            max_log: overrides.max_log.unwrap_or(self.max_log),
        };
        limits.validate(max_memory)?;
        Ok(limits)
    }

    /// Checks that every limit is in range: a positive timeout of at most
    /// [`MAX_TIMEOUT`], a positive fuel budget, a memory limit between one
    /// wasm page and `max_memory`, output and log caps of at most
    /// [`MAX_OUTPUT`].
    pub fn validate(&self, max_memory: u64) -> Result<()> {
        if self.timeout.is_zero() {
            return Err(Error::InvalidLimit {
                name: "timeout",
                reason: "must be greater than zero".into(),
            });
        }
        if self.timeout > MAX_TIMEOUT {
            return Err(Error::InvalidLimit {
                name: "timeout",
                reason: format!(
                    "{} is longer than the maximum of {}",
                    crate::units::format_duration(self.timeout),
                    crate::units::format_duration(MAX_TIMEOUT)
                ),
            });
        }
        if self.fuel == Some(0) {
            return Err(Error::InvalidLimit {
                name: "fuel",
                reason: "must be greater than zero (omit it for no fuel limit)".into(),
            });
        }
        if self.memory < 65_536 {
            return Err(Error::InvalidLimit {
                name: "memory",
                reason: format!("{} bytes is less than one wasm page (64 KiB)", self.memory),
            });
        }
        if self.memory > max_memory {
            return Err(Error::InvalidLimit {
                name: "memory",
                reason: format!(
                    "{} is more than the most a task may have in this pool ({}); ask for less, \
                     or raise the pool's maximum: `wpool serve --max-memory` (`WPOOL_MAX_MEMORY`, \
                     `max_memory` in its config file), `EngineConfig::max_memory` in a program \
                     embedding wpool",
                    crate::units::format_size(self.memory),
                    crate::units::format_size(max_memory)
                ),
            });
        }
        for (name, value, max) in [
            ("max_output", self.max_output, MAX_OUTPUT),
            ("max_log", self.max_log, MAX_LOG),
        ] {
            if value > max {
                return Err(Error::InvalidLimit {
                    name,
                    reason: format!(
                        "{} is more than the maximum of {}",
                        crate::units::format_size(value),
                        crate::units::format_size(max)
                    ),
                });
            }
        }
        Ok(())
    }
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

mod opt_duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_and_are_checked() {
        let defaults = Limits::default();
        let limits = defaults
            .with_overrides(
                &LimitOverrides {
                    timeout: Some(Duration::from_millis(500)),
                    fuel: Some(10),
                    ..Default::default()
                },
                1 << 30,
            )
            .unwrap();
        assert_eq!(limits.timeout, Duration::from_millis(500));
        assert_eq!(limits.fuel, Some(10));
        assert_eq!(limits.memory, defaults.memory);

        let too_much = LimitOverrides {
            memory: Some(2 << 30),
            ..Default::default()
        };
        let err = defaults.with_overrides(&too_much, 1 << 30).unwrap_err();
        assert!(
            err.to_string().contains("the most a task may have"),
            "{err}"
        );
        // The advice names settings that exist, on the daemon and the library.
        for setting in [
            "--max-memory",
            "WPOOL_MAX_MEMORY",
            "EngineConfig::max_memory",
        ] {
            assert!(err.to_string().contains(setting), "{err}");
        }

        for bad in [
            LimitOverrides {
                timeout: Some(Duration::ZERO),
                ..Default::default()
            },
            LimitOverrides {
                fuel: Some(0),
                ..Default::default()
            },
            LimitOverrides {
                memory: Some(1),
                ..Default::default()
            },
            LimitOverrides {
                max_output: Some(u64::MAX),
                ..Default::default()
            },
            LimitOverrides {
                timeout: Some(Duration::from_secs(u64::MAX / 2)),
                ..Default::default()
            },
        ] {
            assert!(defaults.with_overrides(&bad, 1 << 30).is_err(), "{bad:?}");
        }
    }
}
