//! Bad input on the tracker socket: any bytes a client sends.
//!
//! 1. `parse_request` never panics, and what it accepts survives a round trip.
//! 2. `server::handle_connection`, fed the bytes as a whole connection (over a duplex stream,
//!    with a stand-in tracker loop), always ends, and writes only well-formed response lines,
//!    at most one per input line plus one refusal.

#![no_main]

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use root_tracker::protocol::{Request, Response, parse_request};
use root_tracker::report::Disclosure;
use root_tracker::server::{Limits, handle_connection};
use root_tracker::tracker::{JobSender, job_channel};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A stand-in for the tracker loop: answers every job at once, on its own thread.
fn jobs() -> JobSender {
    static JOBS: OnceLock<Mutex<JobSender>> = OnceLock::new();
    let jobs = JOBS.get_or_init(|| {
        let (sender, receiver) = job_channel().expect("an eventfd");
        std::thread::spawn(move || {
            while let Ok(job) = receiver.recv() {
                let response = match job.request {
                    Request::Status {} => Response::Status {
                        status: serde_json::json!({"backend": "fuzz"}),
                    },
                    Request::Query { .. } => Response::Roots {
                        report: serde_json::value::RawValue::from_string(
                            r#"{"complete":true,"roots":[]}"#.to_owned(),
                        )
                        .expect("a constant JSON object"),
                    },
                };
                let _ = job.reply.send(response);
            }
        });
        Mutex::new(sender)
    });
    jobs.lock().expect("the fuzzer is single-threaded").clone()
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = parse_request(data) {
        let line = serde_json::to_vec(&request).expect("a request serializes");
        assert_eq!(parse_request(&line).ok(), Some(request));
    }

    let limits = Limits {
        max_requests_per_connection: 4,
        request_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(5),
        ..Limits::default()
    };
    let disclosure = match data.first() {
        Some(byte) if byte % 3 == 0 => None,
        Some(byte) if byte % 3 == 1 => Some(Disclosure::Censored),
        _ => Some(Disclosure::Full),
    };
    let output = runtime().block_on(async {
        let (client, server_side) = tokio::io::duplex(1 << 16);
        let (mut reader, mut writer) = tokio::io::split(client);
        let server = handle_connection(server_side, disclosure, jobs(), &limits);
        let client = async {
            // The server may hang up before reading everything: a failed write is fine.
            let _ = writer.write_all(data).await;
            let _ = writer.shutdown().await;
            let mut output = Vec::new();
            reader.read_to_end(&mut output).await.map(|_| output)
        };
        let (served, output) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(server, client)
        })
        .await
        .expect("a connection always ends");
        drop(served);
        output.expect("reading the server's answers")
    });
    let lines = data.iter().filter(|&&byte| byte == b'\n').count();
    let responses: Vec<&[u8]> = output
        .split(|&byte| byte == b'\n')
        .filter(|line| !line.is_empty())
        .collect();
    assert!(responses.len() <= lines + 1, "more answers than requests");
    for line in responses {
        serde_json::from_slice::<Response>(line).expect("a well-formed response line");
    }
});
