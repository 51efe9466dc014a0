//! Engine logs: `tracing` events written as JSON lines in pino's shape, on
//! the same stream as the TypeScript layer's logs.
//!
//! The engine traces every connection's stages (`proxy.rs` opens a `conn`
//! span and emits `debug!`/`trace!` events at accept, target, policy,
//! detection, connect, copy and close). Nothing is written unless a filter
//! enables it, and at the default filter (`info`) those callsites are
//! disabled once, by tracing's callsite cache: a disabled `debug!` costs one
//! relaxed load, and the per-connection span is never built.
//!
//! The filter uses `RUST_LOG`'s directive syntax ([`EnvFilter`]) and can be
//! replaced at run time, e.g. to trace only the connections to one target:
//! `info,meshpipe_core[conn{target=10.0.0.5:3306}]=trace`.
//!
//! A line looks like pino's (`ts/observe/logger.ts`), so one log pipeline
//! parses both: `{"level":"debug","time":"2026-11-30T12:00:00.000Z","pid":7,
//! "name":"meshpipe","component":"engine","msg":"connected","conn":3,
//! "target":"10.0.0.5:3306",...}`. Each line is written with one `write(2)`.
//! With [`Format::Text`] (a terminal: `--log-format text`) the same line is
//! rendered for a human instead, exactly as the TypeScript layer renders its
//! own (`ts/observe/log-format.ts`, `log/text.rs`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::reload;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Errors from installing or changing the log filter.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(
        "invalid engine log filter {filter:?}: {reason}; expected RUST_LOG-style directives, e.g. \"info\", \"meshpipe_core=debug\" or \"info,meshpipe_core[conn{{target=10.0.0.5:3306}}]=trace\""
    )]
    Filter { filter: String, reason: String },
    #[error("engine logging is already installed with another output stream ({0}); the filter can still be changed")]
    OtherStream(&'static str),
    #[error("cannot install engine logging: {0}")]
    Install(String),
}

/// Where engine log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// How a line is written: pino-shaped JSON (log collectors) or text (a human at a terminal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
}

/// The current format; switchable at any time (one relaxed load per line).
static TEXT: AtomicBool = AtomicBool::new(false);

/// Sets the format of the lines written from now on.
pub fn set_format(format: Format) {
    TEXT.store(format == Format::Text, Ordering::Relaxed);
}

mod text;

struct Installed {
    stream: Stream,
    handle: reload::Handle<EnvFilter, Registry>,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

fn parse(filter: &str) -> Result<EnvFilter, LogError> {
    EnvFilter::builder().with_regex(false).parse(filter).map_err(|e| LogError::Filter { filter: filter.to_string(), reason: e.to_string() })
}

/// Installs the process-wide engine log subscriber writing to `stream` with
/// `filter`, or (when it is installed already, e.g. by another engine in the
/// same process) replaces the filter. Fails if tracing already has a
/// different global subscriber.
pub fn install(filter: &str, stream: Stream) -> Result<(), LogError> {
    let parsed = parse(filter)?;
    if let Some(installed) = INSTALLED.get() {
        if installed.stream != stream {
            return Err(LogError::OtherStream(installed.stream.name()));
        }
        return set_filter_parsed(installed, parsed);
    }
    let (layer, handle) = reload::Layer::new(parsed);
    let subscriber = Registry::default().with(layer).with(PinoLayer { stream });
    tracing::subscriber::set_global_default(subscriber).map_err(|e| LogError::Install(e.to_string()))?;
    let _ = INSTALLED.set(Installed { stream, handle });
    Ok(())
}

/// Replaces the filter of the installed subscriber.
pub fn set_filter(filter: &str) -> Result<(), LogError> {
    let parsed = parse(filter)?;
    match INSTALLED.get() {
        Some(installed) => set_filter_parsed(installed, parsed),
        None => Err(LogError::Install("engine logging is not installed".into())),
    }
}

fn set_filter_parsed(installed: &Installed, parsed: EnvFilter) -> Result<(), LogError> {
    installed.handle.reload(parsed).map_err(|e| LogError::Install(e.to_string()))?;
    // A filter that names span fields is checked per event; callsites that
    // were disabled for good under the old filter must be asked again.
    tracing_core_rebuild();
    Ok(())
}

fn tracing_core_rebuild() {
    tracing::callsite::rebuild_interest_cache();
}

/// A span's fields, already rendered as JSON members (`,"k":v`).
struct SpanFields(String);

/// Renders event and span fields as JSON members.
struct JsonFields<'a> {
    out: &'a mut String,
    message: Option<String>,
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_string());
        } else {
            member(self.out, field.name(), |out| json_string(out, value));
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        member(self.out, field.name(), |out| {
            let _ = write!(out, "{value}");
        });
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        member(self.out, field.name(), |out| {
            let _ = write!(out, "{value}");
        });
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        member(self.out, field.name(), |out| {
            let _ = write!(out, "{value}");
        });
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = Some(text);
        } else {
            member(self.out, field.name(), |out| json_string(out, &text));
        }
    }
}

fn member(out: &mut String, name: &str, value: impl FnOnce(&mut String)) {
    out.push(',');
    json_string(out, name);
    out.push(':');
    value(out);
}

fn json_string(out: &mut String, s: &str) {
    // serde_json escapes exactly as JSON requires (control characters too).
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

/// Writes each event as one pino-shaped JSON line.
struct PinoLayer {
    stream: Stream,
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for PinoLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = String::new();
        attrs.record(&mut JsonFields { out: &mut fields, message: None });
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(fields) = ext.get_mut::<SpanFields>() {
                values.record(&mut JsonFields { out: &mut fields.0, message: None });
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut line = String::with_capacity(256);
        line.push_str("{\"level\":\"");
        line.push_str(match *meta.level() {
            tracing::Level::TRACE => "trace",
            tracing::Level::DEBUG => "debug",
            tracing::Level::INFO => "info",
            tracing::Level::WARN => "warn",
            tracing::Level::ERROR => "error",
        });
        line.push_str("\",\"time\":\"");
        iso_time(&mut line, SystemTime::now());
        let _ = write!(line, "\",\"pid\":{},\"name\":\"meshpipe\",\"component\":\"engine\"", std::process::id());
        let mut fields = String::new();
        let mut visitor = JsonFields { out: &mut fields, message: None };
        event.record(&mut visitor);
        let message = visitor.message.take().unwrap_or_default();
        member(&mut line, "msg", |out| json_string(out, &message));
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<SpanFields>() {
                    line.push_str(&f.0);
                }
            }
        }
        line.push_str(&fields);
        line.push_str("}\n");
        if TEXT.load(Ordering::Relaxed) {
            line = text::render(&line);
        }
        // One write per line: lines from engine threads and from pino never
        // interleave mid-line.
        let _ = match self.stream {
            Stream::Stdout => std::io::stdout().lock().write_all(line.as_bytes()),
            Stream::Stderr => std::io::stderr().lock().write_all(line.as_bytes()),
        };
    }
}

/// `2026-11-30T12:00:00.000Z` (UTC, millisecond precision, like pino's isoTime).
fn iso_time(out: &mut String, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    let _ = write!(out, "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, d.subsec_millis());
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn iso_times() {
        let mut s = String::new();
        iso_time(&mut s, UNIX_EPOCH);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
        s.clear();
        // 2026-11-30T12:34:56.789Z
        iso_time(&mut s, UNIX_EPOCH + Duration::from_millis(1_796_042_096_789));
        assert_eq!(s, "2026-11-30T12:34:56.789Z");
        s.clear();
        iso_time(&mut s, UNIX_EPOCH + Duration::from_secs(951_782_400)); // leap day 2000
        assert_eq!(s, "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn bad_filters_name_the_filter() {
        let err = parse("meshpipe_core=loud").unwrap_err().to_string();
        assert!(err.contains("meshpipe_core=loud") && err.contains("expected"), "{err}");
        assert!(parse("info,meshpipe_core[conn{target=10.0.0.5:3306}]=trace").is_ok());
    }
}
