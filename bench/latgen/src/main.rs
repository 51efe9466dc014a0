//! latgen: the fixed-rate (open-loop) HTTP/1.1 latency generator of the
//! benchmark's `latency` section.
//!
//! Why a generator of our own: the section measures tenths of a millisecond
//! added by a proxy at the 99th percentile, and the generator's own jitter
//! must stay well below that. A generator with a garbage-collected runtime
//! adds pauses of its own to every path it measures, so the difference
//! "through the proxy minus direct" is mostly its noise. This one is plain
//! threads and blocking sockets: nothing runs in it between a response and
//! the next request but a sleep.
//!
//! The model is wrk2's. `--connections` keep-alive connections each have a
//! thread and a schedule of their own; together they send `--rate` requests
//! per second, evenly interleaved: request k of connection c is due at
//! `t0 + (c + k * connections) / rate`. A connection sends a request when it
//! is due, or at once when its previous response came back after that time.
//! Every latency is counted from when the request was due, so a stall cannot
//! hide the requests queued behind it (no coordinated omission). That also
//! counts any lateness of the generator's own wake-up; how late it woke for
//! requests it was free to send on time is reported separately
//! (`generatorLateP99Ms`), so a reader can see how much of a percentile that
//! could be.
//!
//! The crate has no dependencies and no `unsafe`.
//!
//! Usage: `latgen --url http://127.0.0.1:8080/small.bin --rate 5000
//! --duration 4 [--warmup 1] [--connections 16]`. Requests due in the first
//! `--warmup` seconds are sent but not recorded. Output: one JSON object on
//! stdout with the recorded requests, errors (non-2xx statuses, connection
//! errors, 5 s timeouts), the achieved rate and the latency percentiles in
//! milliseconds. Exit status 2 on bad arguments.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

/// A response head larger than this is an error, not a reason to grow.
const MAX_HEAD: usize = 64 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Args {
    addr: SocketAddr,
    authority: String,
    path: String,
    rate: f64,
    duration: Duration,
    warmup: Duration,
    connections: usize,
}

const USAGE: &str = "usage: latgen --url http://HOST:PORT/PATH --rate REQ_PER_S --duration SECONDS [--warmup SECONDS] [--connections N]";

fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut url = None;
    let (mut rate, mut duration, mut warmup, mut connections) = (None, None, 1.0f64, 16usize);
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: &str, what: &str| {
            v.parse::<f64>().ok().filter(|n| n.is_finite() && *n >= 0.0).ok_or(format!("{what}: expected a non-negative number, got {v:?}"))
        };
        match flag.as_str() {
            "--url" => url = Some(value()?.clone()),
            "--rate" => rate = Some(number(value()?, "--rate")?),
            "--duration" => duration = Some(number(value()?, "--duration")?),
            "--warmup" => warmup = number(value()?, "--warmup")?,
            "--connections" => {
                let v = value()?;
                connections =
                    v.parse().ok().filter(|n| (1..=1024).contains(n)).ok_or(format!("--connections: expected 1 to 1024, got {v:?}"))?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let url = url.ok_or("--url is required")?;
    let rest = url.strip_prefix("http://").ok_or(format!("--url: only http:// URLs are supported, got {url:?}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("--url: cannot resolve {authority:?} (expected HOST:PORT): {e}"))?
        .next()
        .ok_or(format!("--url: {authority:?} resolved to no address"))?;
    let rate = rate.filter(|r| *r > 0.0).ok_or("--rate is required and must be above 0")?;
    let duration = duration.filter(|d| *d > 0.0).ok_or("--duration is required and must be above 0")?;
    Ok(Args {
        addr,
        authority: authority.to_string(),
        path: path.to_string(),
        rate,
        duration: Duration::from_secs_f64(duration),
        warmup: Duration::from_secs_f64(warmup),
        connections,
    })
}

/// What one connection's thread measured.
#[derive(Default)]
struct Outcome {
    /// Latency of each recorded request, nanoseconds.
    latencies: Vec<u64>,
    /// How late the thread woke for requests it was free to send on time.
    late: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Outcome {
    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }
}

/// One keep-alive connection and its read buffer.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    filled: usize,
}

impl Conn {
    fn open(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn { stream, buf: vec![0; 16 * 1024], filled: 0 })
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.filled == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        match self.stream.read(&mut self.buf[self.filled..])? {
            0 => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection")),
            n => {
                self.filled += n;
                Ok(())
            }
        }
    }

    /// Sends `request` and reads one whole response (head and a
    /// `Content-Length` body); returns its status code.
    fn exchange(&mut self, request: &[u8]) -> io::Result<u16> {
        self.stream.write_all(request)?;
        let head_end = loop {
            if let Some(i) = self.buf[..self.filled].windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if self.filled >= MAX_HEAD {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("response head over {MAX_HEAD} bytes")));
            }
            self.fill()?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|_| invalid("response head is not UTF-8"))?;
        let status = head
            .get(9..12)
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|_| head.starts_with("HTTP/1."))
            .ok_or_else(|| invalid("no HTTP/1.x status line"))?;
        let length = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")).map(|(_, v)| v.trim().to_string()))
            .ok_or_else(|| invalid("the response has no Content-Length (latgen reads only sized bodies)"))?
            .parse::<usize>()
            .map_err(|_| invalid("Content-Length is not a number"))?;
        let total = head_end + length;
        while self.filled < total {
            if self.buf.len() < total {
                self.buf.resize(total, 0);
            }
            self.fill()?;
        }
        self.buf.copy_within(total..self.filled, 0);
        self.filled -= total;
        Ok(status)
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn run_connection(args: &Args, index: usize, t0: Instant, request: &[u8]) -> Outcome {
    let mut out = Outcome::default();
    let (warmup_end, end) = (t0 + args.warmup, t0 + args.warmup + args.duration);
    let mut conn: Option<Conn> = None;
    let mut prev_done = t0;
    for k in 0u64.. {
        let due = t0 + Duration::from_secs_f64((index as f64 + (k as f64) * args.connections as f64) / args.rate);
        if due >= end {
            break;
        }
        let now = Instant::now();
        if now < due {
            thread::sleep(due - now);
        }
        let record = due >= warmup_end;
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(args.addr) {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    if record {
                        out.error(format!("connect {}: {e}", args.addr));
                    }
                    continue;
                }
            },
        };
        let sent = Instant::now();
        // Free to go on time (the previous response was in): any delay
        // before the write is the generator's own wake-up.
        let free = prev_done <= due;
        let result = c.exchange(request);
        let done = Instant::now();
        prev_done = done;
        match result {
            Ok(status) if (200..300).contains(&status) => {
                if record {
                    out.latencies.push((done - due).as_nanos() as u64);
                    if free {
                        out.late.push(sent.saturating_duration_since(due).as_nanos() as u64);
                    }
                }
            }
            Ok(status) => {
                if record {
                    out.error(format!("status {status}"));
                }
            }
            Err(e) => {
                if record {
                    out.error(format!("{e}"));
                }
                conn = None;
            }
        }
    }
    out
}

/// The value at quantile `q` of sorted `v`, in milliseconds (NaN if empty).
fn quantile_ms(v: &[u64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i] as f64 / 1e6
}

fn json_number(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.6}")
    } else {
        "null".to_string()
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("latgen: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let request = format!("GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: meshpipe-latgen\r\n\r\n", args.path, args.authority).into_bytes();
    // A common start a little ahead, so every thread is up and sleeping
    // before its first request is due.
    let t0 = Instant::now() + Duration::from_millis(50);
    let outcomes: Vec<Outcome> = thread::scope(|s| {
        let handles: Vec<_> = (0..args.connections)
            .map(|i| {
                s.spawn({
                    let (args, request) = (&args, &request);
                    move || run_connection(args, i, t0, request)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a connection thread panicked")).collect()
    });
    let mut latencies: Vec<u64> = outcomes.iter().flat_map(|o| o.latencies.iter().copied()).collect();
    let mut late: Vec<u64> = outcomes.iter().flat_map(|o| o.late.iter().copied()).collect();
    latencies.sort_unstable();
    late.sort_unstable();
    let errors: u64 = outcomes.iter().map(|o| o.errors).sum();
    let first_error = outcomes.iter().find_map(|o| o.first_error.clone());
    let fields = [
        ("requests", latencies.len().to_string()),
        ("errors", errors.to_string()),
        ("rate", json_number(latencies.len() as f64 / args.duration.as_secs_f64())),
        ("connections", args.connections.to_string()),
        ("p50Ms", json_number(quantile_ms(&latencies, 0.50))),
        ("p90Ms", json_number(quantile_ms(&latencies, 0.90))),
        ("p99Ms", json_number(quantile_ms(&latencies, 0.99))),
        ("p999Ms", json_number(quantile_ms(&latencies, 0.999))),
        ("maxMs", json_number(quantile_ms(&latencies, 1.0))),
        ("generatorLateP99Ms", json_number(quantile_ms(&late, 0.99))),
        ("firstError", first_error.as_deref().map_or("null".to_string(), json_string)),
    ];
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    println!("{{{}}}", body.join(","));
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn args(v: &[&str]) -> Result<Args, String> {
        parse_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn arguments_are_checked() {
        let a = args(&["--url", "http://127.0.0.1:8080/x.bin", "--rate", "5000", "--duration", "4"]).unwrap();
        assert_eq!((a.path.as_str(), a.authority.as_str(), a.connections), ("/x.bin", "127.0.0.1:8080", 16));
        assert!(args(&["--url", "https://127.0.0.1:1/", "--rate", "1", "--duration", "1"]).unwrap_err().contains("http://"));
        assert!(args(&["--url", "http://127.0.0.1:1/", "--rate", "0", "--duration", "1"]).unwrap_err().contains("--rate"));
        assert!(args(&["--url", "http://127.0.0.1:1/", "--rate", "1", "--duration", "1", "--connections", "0"])
            .unwrap_err()
            .contains("1 to 1024"));
        assert!(args(&["--bogus"]).unwrap_err().contains("--bogus"));
    }

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1_000_000).collect();
        assert_eq!(quantile_ms(&v, 0.5), 50.0);
        assert_eq!(quantile_ms(&v, 0.99), 99.0);
        assert_eq!(quantile_ms(&v, 1.0), 100.0);
        assert!(quantile_ms(&[], 0.5).is_nan());
    }

    #[test]
    fn reads_sized_responses_back_to_back_on_one_connection() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            for body in ["hello", "", "world!"] {
                let n = s.read(&mut buf).unwrap();
                assert!(buf[..n].starts_with(b"GET /p HTTP/1.1\r\n"));
                // Head and body in separate writes: the reader must join them.
                s.write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes()).unwrap();
                s.write_all(body.as_bytes()).unwrap();
            }
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n").unwrap();
        });
        let mut c = Conn::open(addr).unwrap();
        let req = b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n";
        for _ in 0..3 {
            assert_eq!(c.exchange(req).unwrap(), 200);
            assert_eq!(c.filled, 0, "nothing of a response may be left over");
        }
        assert_eq!(c.exchange(req).unwrap(), 503);
        server.join().unwrap();
    }

    #[test]
    fn a_stall_counts_for_every_request_queued_behind_it() {
        // A server that answers at once, except the 10th request: 200 ms.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            for i in 1.. {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if i == 10 {
                    thread::sleep(Duration::from_millis(200));
                }
                if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").is_err() {
                    return;
                }
            }
        });
        let args = Args {
            addr,
            authority: addr.to_string(),
            path: "/".into(),
            rate: 200.0,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            connections: 1,
        };
        let out = run_connection(&args, 0, Instant::now(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(out.errors, 0, "{:?}", out.first_error);
        let slow = out.latencies.iter().filter(|&&ns| ns > 50_000_000).count();
        // Requests are due every 5 ms: the stalled one and the ~30 due while it
        // stalled all waited, and each counts from when it was due. Timing
        // from the write instead would show one slow request.
        assert!(slow >= 10, "{slow} requests over 50 ms");
        assert!(*out.latencies.iter().max().unwrap() >= 190_000_000);
    }
}
