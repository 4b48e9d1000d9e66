//! The JSON shapes of the API: what clients send and what they get back.
//! The CLI uses the same types, so the two cannot disagree.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

use crate::{Backoff, LimitOverrides, ModuleHash, TaskRecord, TaskResult, TaskSpec};

/// A duration in a request: a string with a unit (`"500ms"`, `"5s"`,
/// `"10m"`) or a number of milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// A size in a request: a string with a unit (`"64MiB"`) or a number of
/// bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanSize(pub u64);

/// A count in a request: a number, or a string such as `"10M"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanCount(pub u64);

/// `v` as a whole number, if it is one (`5.0`, not `5.5`).
fn whole_f64(v: f64) -> Option<i128> {
    // Every f64 of magnitude up to 2^100 fits an i128 exactly.
    (v.is_finite() && v.fract() == 0.0 && v.abs() < 2f64.powi(100)).then_some(v as i128)
}

/// Deserializes an optional whole number written `5` or `5.0` (JSON does
/// not tell them apart, and JSON Schema calls both integers), refusing one
/// out of `T`'s range.
fn opt_whole<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i128>,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: TryFrom<i128>> Visitor<'de> for V<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a whole number")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(self)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            T::try_from(i128::from(v))
                .map(Some)
                .map_err(|_| E::custom(format!("{v} is out of range")))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            T::try_from(i128::from(v))
                .map(Some)
                .map_err(|_| E::custom(format!("{v} is out of range")))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            let n = whole_f64(v).ok_or_else(|| E::custom(format!("{v} is not a whole number")))?;
            T::try_from(n)
                .map(Some)
                .map_err(|_| E::custom(format!("{v} is out of range")))
        }
    }
    d.deserialize_option(V(std::marker::PhantomData))
}

macro_rules! human {
    ($ty:ident, $inner:ty, $what:literal, $parse:path, $from_u64:expr, $show:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                        Ok($ty($from_u64(v)))
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$ty, E> {
                        u64::try_from(v)
                            .map(|v| $ty($from_u64(v)))
                            .map_err(|_| E::custom(format!("{v} is negative: expected {}", $what)))
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$ty, E> {
                        // JSON does not tell 5 from 5.0; JSON Schema calls
                        // both integers.
                        match whole_f64(v).and_then(|n| u64::try_from(n).ok()) {
                            Some(n) => Ok($ty($from_u64(n))),
                            None => Err(E::custom(format!(
                                "{v} is not a whole number of zero or more: expected {}",
                                $what
                            ))),
                        }
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        $parse(v).map($ty).map_err(E::custom)
                    }
                }
                d.deserialize_any(V)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let show: fn(&$inner) -> String = $show;
                s.serialize_str(&show(&self.0))
            }
        }
    };
}

human!(
    HumanDuration,
    Duration,
    "a duration such as \"500ms\", \"5s\" or \"10m\", or a number of milliseconds",
    crate::units::parse_duration,
    Duration::from_millis,
    |d| format!("{}ms", d.as_millis())
);
human!(
    HumanSize,
    u64,
    "a size such as \"64MiB\", or a number of bytes",
    crate::units::parse_size,
    std::convert::identity,
    |n| n.to_string()
);
human!(
    HumanCount,
    u64,
    "a count such as 1000000 or \"10M\"",
    crate::units::parse_count,
    std::convert::identity,
    |n| n.to_string()
);

/// A module's bytes, as `POST /v1/modules` takes them (a binary string in
/// the OpenAPI document).
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct WasmBytes(pub Vec<u8>);

/// The waits between attempts.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackoffRequest {
    /// The wait before the second attempt. Default: 1s. Longer than `max`,
    /// it is cut to `max`; with `max` left out, `max` grows to it.
    #[schema(value_type = Option<String>, example = "1s")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<HumanDuration>,
    /// The longest wait. Default: 5m.
    #[schema(value_type = Option<String>, example = "5m")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<HumanDuration>,
    /// Growth per attempt, 1 to 100. Default: 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
    /// Randomise each wait. Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<bool>,
}

/// `POST /v1/tasks`: a task to run.
///
/// Durations are strings with a unit (`"5s"`) or milliseconds; sizes are
/// strings with a unit (`"64MiB"`) or bytes. Unknown fields are refused.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitTask {
    /// The module's hash (64 hex digits), uploaded before with
    /// `POST /v1/modules`.
    #[schema(example = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")]
    pub module: String,
    /// The input as a JSON value; the task receives its JSON text.
    #[schema(value_type = Option<Object>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// The input as raw bytes, base64 (standard alphabet). Not with `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_base64: Option<String>,
    /// Higher runs first. Default: 0.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "opt_whole"
    )]
    pub priority: Option<i32>,
    /// Wall-clock timeout of each attempt.
    #[schema(value_type = Option<String>, example = "5s")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Fuel budget of each attempt.
    #[schema(value_type = Option<u64>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<HumanCount>,
    /// Memory limit.
    #[schema(value_type = Option<String>, example = "64MiB")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<HumanSize>,
    /// Output size limit.
    #[schema(value_type = Option<String>, example = "1MiB")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output: Option<HumanSize>,
    /// How much of the log is kept.
    #[schema(value_type = Option<String>, example = "64KiB")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_log: Option<HumanSize>,
    /// How many times the task may run in all, 1 to 100. Default: 1.
    /// A run lost with its host is not an attempt (see
    /// `max_interruptions`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "opt_whole"
    )]
    pub max_attempts: Option<u32>,
    /// How many runs may be lost with their host (a crash, a lost lease)
    /// before the task ends `interrupted`, 1 to 100. Default: 3.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "opt_whole"
    )]
    pub max_interruptions: Option<u32>,
    /// The waits between attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffRequest>,
    /// Start no sooner than this after submission. Not with `run_at`.
    #[schema(value_type = Option<String>, example = "10m")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<HumanDuration>,
    /// Start no sooner than this time, in milliseconds since the Unix epoch.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "opt_whole"
    )]
    pub run_at: Option<u64>,
    /// Expire (never start) if not started within this of submission.
    #[schema(value_type = Option<String>, example = "1h")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_after: Option<HumanDuration>,
    /// Expire if not started by this time (ms since the Unix epoch).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "opt_whole"
    )]
    pub expire_at: Option<u64>,
    /// A second submission with the same key returns the first task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Free-form labels; tasks can be listed by label.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Standard base64 with padding, as the schema describes it; bits past the
/// last byte are ignored rather than refused (RFC 4648 allows either).
const INPUT_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// Why a [`SubmitTask`] is refused before it reaches the pool.
#[derive(Debug)]
pub enum SpecError {
    /// Malformed field (the message names it).
    Invalid(&'static str, String),
    /// The input is larger than allowed.
    InputTooLarge(u64, u64),
}

impl SubmitTask {
    /// The input bytes: the JSON text of `input`, or the decoded
    /// `input_base64`, or nothing.
    pub fn input_bytes(&self) -> Result<Vec<u8>, SpecError> {
        match (&self.input, &self.input_base64) {
            (Some(_), Some(_)) => Err(SpecError::Invalid(
                "invalid_request",
                "give either `input` (a JSON value) or `input_base64` (bytes), not both".into(),
            )),
            (Some(value), None) => Ok(serde_json::to_vec(value).unwrap_or_default()),
            (None, Some(text)) => INPUT_BASE64.decode(text).map_err(|e| {
                SpecError::Invalid(
                    "invalid_base64",
                    format!("`input_base64` is not valid base64 (standard alphabet): {e}"),
                )
            }),
            (None, None) => Ok(Vec::new()),
        }
    }

    /// The task spec this request asks for, with its input already decoded.
    pub fn to_spec(&self, input: Vec<u8>) -> Result<TaskSpec, SpecError> {
        let module: ModuleHash = self.module.parse().map_err(|e: crate::Error| {
            SpecError::Invalid("invalid_request", format!("`module`: {e}"))
        })?;
        if let Some(fuel) = self.fuel
            && fuel.0 > i64::MAX as u64
        {
            return Err(SpecError::Invalid(
                "invalid_limit",
                format!("`fuel` {} is too large: the most is {}", fuel.0, i64::MAX),
            ));
        }
        if let Some(key) = self.labels.keys().find(|k| k.contains('=')) {
            return Err(SpecError::Invalid(
                "invalid_task",
                format!(
                    "label key `{key}` contains `=`: tasks are listed by `label=KEY=VALUE`, \
                     which could never name it; choose a key without `=`"
                ),
            ));
        }
        let mut spec = TaskSpec::new(module, input);
        if let Some(priority) = self.priority {
            spec = spec.priority(priority);
        }
        spec = spec.limits(LimitOverrides {
            timeout: self.timeout.map(|d| d.0),
            fuel: self.fuel.map(|c| c.0),
            memory: self.memory.map(|s| s.0),
            max_output: self.max_output.map(|s| s.0),
            max_log: self.max_log.map(|s| s.0),
        });
        if let Some(attempts) = self.max_attempts {
            spec = spec.max_attempts(attempts);
        }
        if let Some(interruptions) = self.max_interruptions {
            spec = spec.max_interruptions(interruptions);
        }
        if let Some(b) = &self.backoff {
            let mut backoff = Backoff::default();
            if let Some(d) = b.initial {
                backoff.initial = d.0;
            }
            if let Some(d) = b.max {
                backoff.max = d.0;
            }
            if let Some(m) = b.multiplier {
                backoff.multiplier = m;
            }
            if let Some(j) = b.jitter {
                backoff.jitter = j;
            }
            // An initial wait past the max: a max left out grows to it; a
            // max given caps it (every wait is then the max).
            if backoff.initial > backoff.max {
                if b.max.is_none() {
                    backoff.max = backoff.initial;
                } else {
                    backoff.initial = backoff.max;
                }
            }
            spec = spec.backoff(backoff);
        }
        match (self.delay, self.run_at) {
            (Some(_), Some(_)) => {
                return Err(SpecError::Invalid(
                    "invalid_request",
                    "give either `delay` or `run_at`, not both".into(),
                ));
            }
            (Some(d), None) => spec = spec.delay(d.0),
            (None, Some(at)) => spec = spec.run_at(epoch_millis("run_at", at)?),
            (None, None) => {}
        }
        match (self.expire_after, self.expire_at) {
            (Some(_), Some(_)) => {
                return Err(SpecError::Invalid(
                    "invalid_request",
                    "give either `expire_after` or `expire_at`, not both".into(),
                ));
            }
            (Some(d), None) => spec = spec.expire_after(d.0),
            (None, Some(at)) => spec = spec.expire_at(epoch_millis("expire_at", at)?),
            (None, None) => {}
        }
        if let Some(key) = &self.idempotency_key {
            spec = spec.idempotency_key(key.clone());
        }
        for (k, v) in &self.labels {
            spec = spec.label(k.clone(), v.clone());
        }
        Ok(spec)
    }
}

/// The furthest ahead a task may be scheduled or given an expiry, as
/// `delay` and `expire_after` are (ten years).
pub const MAX_AHEAD: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A time in milliseconds since the Unix epoch, at most [`MAX_AHEAD`] from
/// now.
fn epoch_millis(field: &str, at: u64) -> Result<std::time::SystemTime, SpecError> {
    let time = std::time::UNIX_EPOCH.checked_add(Duration::from_millis(at));
    let latest = std::time::SystemTime::now() + MAX_AHEAD;
    match time {
        Some(time) if time <= latest => Ok(time),
        _ => Err(SpecError::Invalid(
            "invalid_task",
            format!(
                "`{field}` {at} is more than ten years ahead: give a time in milliseconds since \
                 the Unix epoch, within ten years from now (as `delay` and `expire_after` are)"
            ),
        )),
    }
}

/// A stored module.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ModuleInfo {
    /// Its SHA-256, hex.
    pub hash: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its run settings: name, fixed arguments, environment, success codes,
    /// scratch directory (all defaults when none were set).
    #[serde(default)]
    pub settings: crate::ModuleSettings,
}

/// `GET /v1/modules`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ModuleList {
    /// Every stored module.
    pub modules: Vec<ModuleInfo>,
}

/// How a run ended.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct OutcomeView {
    /// `success`, `failed`, `exit`, `trap`, `timeout`, `out_of_fuel`,
    /// `memory_limit`, `output_too_large`, `cancelled`, `invalid_module`,
    /// `host_error`.
    pub kind: String,
    /// What it means, in words.
    pub message: String,
}

impl From<&crate::Outcome> for OutcomeView {
    fn from(outcome: &crate::Outcome) -> Self {
        Self {
            kind: outcome.kind().to_string(),
            message: outcome.to_string(),
        }
    }
}

/// A task's state and settings.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskView {
    /// The task's id (a ULID).
    pub id: String,
    /// The module's hash.
    pub module: String,
    /// `queued`, `scheduled`, `running`, `succeeded`, `failed`,
    /// `cancelled` or `expired`.
    pub state: String,
    /// Higher runs first.
    pub priority: i32,
    /// Attempts so far (runs that ended with the task's own outcome, and
    /// the one running now).
    pub attempts: usize,
    /// The most attempts.
    pub max_attempts: u32,
    /// Runs lost with their host so far; each ran again.
    pub interruptions: u32,
    /// The most interruptions.
    pub max_interruptions: u32,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The idempotency key, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Submitted at (ms since the Unix epoch).
    pub submitted_at: u64,
    /// Last change (ms since the Unix epoch).
    pub updated_at: u64,
    /// Not before (ms since the Unix epoch).
    pub run_at: u64,
    /// Expires if not started by (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Finished at (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// The final outcome, once final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<OutcomeView>,
    /// The last progress reported: `[done, total]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<(u64, u64)>,
    /// The timeout of each attempt, in ms.
    pub timeout_ms: u64,
    /// The memory limit, in bytes.
    pub memory: u64,
    /// The fuel budget, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Every attempt so far, oldest first (the one running now last).
    #[serde(default)]
    pub history: Vec<AttemptView>,
    /// The input's size in bytes (the bytes: `GET /v1/tasks/{id}/input`).
    #[serde(default)]
    pub input_size: u64,
}

/// One attempt of a task.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AttemptView {
    /// 1 for the first.
    pub number: u32,
    /// How it ended; absent while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<OutcomeView>,
    /// Started at (ms since the Unix epoch).
    pub started_at: u64,
    /// Its wall time, in microseconds.
    pub duration_us: u64,
    /// Fuel it consumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel_consumed: Option<u64>,
}

impl From<&crate::Attempt> for AttemptView {
    fn from(a: &crate::Attempt) -> Self {
        Self {
            number: a.number,
            outcome: a.outcome.as_ref().map(OutcomeView::from),
            started_at: a.started_at,
            duration_us: a.duration_us,
            fuel_consumed: a.fuel_consumed,
        }
    }
}

impl From<&TaskRecord> for TaskView {
    fn from(r: &TaskRecord) -> Self {
        Self {
            id: r.id.to_string(),
            module: r.module.to_string(),
            state: r.state.to_string(),
            priority: r.priority,
            attempts: r.attempts.len(),
            max_attempts: r.max_attempts,
            interruptions: r.interruptions,
            max_interruptions: r.max_interruptions,
            labels: r.labels.clone(),
            idempotency_key: r.idempotency_key.clone(),
            submitted_at: r.submitted_at,
            updated_at: r.updated_at,
            run_at: r.run_at,
            expires_at: r.expires_at,
            finished_at: r.finished_at,
            outcome: r.outcome.as_ref().map(OutcomeView::from),
            progress: r.progress,
            timeout_ms: u64::try_from(r.limits.timeout.as_millis()).unwrap_or(u64::MAX),
            memory: r.limits.memory,
            fuel: r.limits.fuel,
            history: r.attempts.iter().map(AttemptView::from).collect(),
            input_size: r.input.len(),
        }
    }
}

/// A task's final result.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ResultView {
    /// The task's id.
    pub id: String,
    /// Its final state.
    pub state: String,
    /// How it ended (absent for an expired task: it never ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<OutcomeView>,
    /// The output as text, when it is valid UTF-8 and carried here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The output bytes, base64, when carried here: outputs up to 64 KiB.
    /// A larger one is read as a stream from `output_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_base64: Option<String>,
    /// The output's size in bytes.
    #[serde(default)]
    pub output_size: u64,
    /// Where to read an output too large to be carried here
    /// (`/v1/tasks/{id}/output`); absent when it is carried here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_url: Option<String>,
    /// The log tail of the last attempt.
    pub log: String,
    /// How many attempts ran.
    pub attempts: usize,
    /// Every attempt, oldest first.
    #[serde(default)]
    pub history: Vec<AttemptView>,
    /// How many runs were lost with their host, and ran again.
    pub interruptions: u32,
    /// Wall time of all attempts, in microseconds.
    pub duration_us: u64,
    /// Fuel of all attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel_consumed: Option<u64>,
    /// Submitted at (ms since the Unix epoch).
    pub submitted_at: u64,
    /// First attempt started at (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// Finished at (ms since the Unix epoch).
    pub finished_at: u64,
}

impl ResultView {
    /// The result of a final task as the API shows it: its output carried
    /// when the record holds it and it is at most
    /// [`INLINE_PAYLOAD`](crate::INLINE_PAYLOAD), else named by
    /// `output_url` (nothing large is read or copied here).
    pub fn of_record(record: &TaskRecord) -> Option<Self> {
        let carried = record
            .output
            .inline()
            .filter(|bytes| bytes.len() <= crate::INLINE_PAYLOAD);
        let mut view =
            Self::from(&record.result_with(carried.map(<[u8]>::to_vec).unwrap_or_default())?);
        view.output_size = record.output.len();
        if carried.is_none() {
            view.output = None;
            view.output_base64 = None;
            view.output_url = Some(format!("/v1/tasks/{}/output", record.id));
        }
        Some(view)
    }
}

/// A result with its whole output carried (for results read in this
/// process, not over the API).
impl From<&TaskResult> for ResultView {
    fn from(r: &TaskResult) -> Self {
        Self {
            id: r.id.to_string(),
            state: r.state.to_string(),
            outcome: r.outcome.as_ref().map(OutcomeView::from),
            output: std::str::from_utf8(&r.output).ok().map(str::to_string),
            output_base64: Some(base64::engine::general_purpose::STANDARD.encode(&r.output)),
            output_size: r.output.len() as u64,
            output_url: None,
            log: r.log.clone(),
            attempts: r.attempts.len(),
            history: r.attempts.iter().map(AttemptView::from).collect(),
            interruptions: r.interruptions,
            duration_us: r.duration_us,
            fuel_consumed: r.fuel_consumed,
            submitted_at: r.submitted_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

impl ResultView {
    /// The output bytes when they are carried here; `None` when they are
    /// to be read from `output_url`.
    pub fn output_bytes(&self) -> Option<Vec<u8>> {
        match (&self.output, &self.output_base64) {
            (Some(text), _) => Some(text.clone().into_bytes()),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok(),
            (None, None) => None,
        }
    }
}

/// `POST /v1/tasks` and `GET /v1/tasks/{id}`: the task, and its result
/// when it has one (`?wait=` on submit).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskAnswer {
    /// The task.
    pub task: TaskView,
    /// Its result, once final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultView>,
    /// On submit: whether this call created the task (false when an
    /// idempotency key named an existing one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
}

/// `GET /v1/tasks`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskList {
    /// Tasks, newest first.
    pub tasks: Vec<TaskView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `DELETE /v1/tasks/{id}`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CancelAnswer {
    /// The task.
    pub id: String,
    /// `cancelled` (it was waiting and never runs) or `killed` (it was
    /// running and is being stopped).
    pub cancel: String,
}

/// `GET /v1/stats`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct StatsView {
    /// Tasks in each state.
    pub counts: BTreeMap<String, u64>,
    /// All tasks in the store.
    pub total: u64,
    /// Workers allowed to take tasks.
    pub workers: usize,
    /// Workers running a task now.
    pub busy: usize,
    /// Workers free now.
    pub idle: usize,
    /// Tasks finished since the server started.
    pub finished: u64,
    /// Tasks finished per second over the last 10 seconds.
    pub finished_per_sec: f64,
    /// Seconds since the server started.
    pub uptime_secs: f64,
    /// Whether the queue is paused (no task is started until resumed).
    #[serde(default)]
    pub paused: bool,
    /// The server's version.
    pub version: String,
}

/// `PUT /v1/workers`: how many tasks run at once.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkersRequest {
    /// From 1 to the daemon's `--max-workers`.
    pub workers: usize,
}

/// `PUT /v1/workers`'s answer.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkersView {
    /// How many tasks run at once now.
    pub workers: usize,
    /// The most this daemon can be set to (`--max-workers`).
    pub max_workers: usize,
}

/// `POST /v1/queue/pause` and `/resume`'s answer.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct QueueView {
    /// Whether the queue is paused.
    pub paused: bool,
}

/// `POST /v1/tasks:purge`: which final tasks to delete.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// Only tasks in this final state (`succeeded`, `failed`, `cancelled`,
    /// `expired`); all final tasks when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Only tasks carrying all these labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `POST /v1/tasks:purge`'s answer.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PurgeView {
    /// How many tasks were deleted.
    pub deleted: u64,
}

impl From<&crate::Stats> for StatsView {
    fn from(s: &crate::Stats) -> Self {
        Self {
            counts: crate::TaskState::ALL
                .iter()
                .map(|state| (state.to_string(), s.counts.get(*state)))
                .collect(),
            total: s.total,
            workers: s.workers,
            busy: s.busy,
            idle: s.idle,
            finished: s.finished,
            finished_per_sec: s.finished_per_sec,
            uptime_secs: s.uptime_secs,
            paused: s.paused,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// The most tasks one `POST /v1/tasks:batch` takes.
pub const MAX_BATCH: usize = 10_000;

/// `POST /v1/tasks:batch`'s answer: one item per task of the batch, in
/// the batch's order, and how many of each kind.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchAnswer {
    /// One per task of the batch, in order.
    pub items: Vec<BatchItem>,
    /// How many tasks this call created.
    pub created: usize,
    /// How many items named a task stored before by its idempotency key
    /// (or one earlier in the same batch).
    pub existing: usize,
    /// How many items were refused (each with its `error`).
    pub failed: usize,
}

/// What became of one task of a batch: its task (`id`, `created`), or why
/// it was refused (`error`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchItem {
    /// Its position in the batch, from 0 (blank lines of a JSON Lines body
    /// are not items).
    pub index: usize,
    /// For a JSON Lines body: its line, from 1 (blank lines counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// The task's id: the one created, or the one its idempotency key
    /// named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Whether this call created the task (false when its idempotency key
    /// named an existing one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    /// Why the item was refused; the message names the item or line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<super::ErrorDetail>,
}
