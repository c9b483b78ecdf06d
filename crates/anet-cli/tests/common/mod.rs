//! Helpers of the CLI tests: the real binary, raw frames, scripted peers.

// Not every test file uses every helper.
#![allow(dead_code)]

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::Duration,
};

/// The `anet` binary under test.
pub(crate) fn anet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_anet"))
}

/// A long-running `anet` subcommand (`echo`, `proxy`) that printed
/// `listening on ADDR`; killed on drop. Its stderr (log lines) is read as it
/// comes, so a chatty daemon never blocks on a full pipe.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Daemon {
    pub(crate) fn start(args: &[&str]) -> Daemon {
        let mut child = anet()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn anet");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("first line");
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let mut err = String::new();
            let _ = child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err);
            panic!("anet {args:?}: first line {line:?}, stderr {err:?}");
        };
        let addr = addr.parse().expect("address");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                sink.lock()
                    .expect("stderr buffer")
                    .extend_from_slice(&buf[..n]);
            }
        });
        Daemon {
            child,
            addr,
            stderr,
        }
    }

    /// Waits up to 10 s for `needle` on the daemon's stderr.
    pub(crate) fn wait_for_stderr(&self, needle: &str) {
        let started = std::time::Instant::now();
        while !self.stderr().contains(needle) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no {needle:?} on stderr: {:?}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the daemon wrote to stderr so far.
    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr buffer")).into_owned()
    }

    /// `anet echo --listen 127.0.0.1:0` with more flags.
    pub(crate) fn echo(flags: &[&str]) -> Daemon {
        let mut args = vec!["echo", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(flags);
        Daemon::start(&args)
    }

    pub(crate) fn addr_string(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port nothing listens on (bound, then released).
pub(crate) fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

/// Writes one frame: a big-endian length of `length_width` bytes, then the body.
pub(crate) fn write_frame(
    out: &mut impl Write,
    length_width: usize,
    tag: &[u8],
    payload: &[u8],
) -> io::Result<()> {
    let len = tag.len() + payload.len();
    let mut frame = Vec::with_capacity(length_width + len);
    if length_width == 2 {
        frame.extend_from_slice(&u16::try_from(len).expect("fits").to_be_bytes());
    } else {
        frame.extend_from_slice(&u32::try_from(len).expect("fits").to_be_bytes());
    }
    frame.extend_from_slice(tag);
    frame.extend_from_slice(payload);
    out.write_all(&frame)
}

/// Reads one frame's body (tag and payload).
pub(crate) fn read_body(input: &mut impl Read, length_width: usize) -> io::Result<Vec<u8>> {
    let mut head = [0u8; 4];
    input.read_exact(&mut head[..length_width])?;
    let len = if length_width == 2 {
        usize::from(u16::from_be_bytes([head[0], head[1]]))
    } else {
        u32::from_be_bytes(head) as usize
    };
    let mut body = vec![0u8; len];
    input.read_exact(&mut body)?;
    Ok(body)
}

/// A device on loopback: frames of `length_width` and a `tag_width`-byte header it
/// echoes; it answers `NC` with `NC00` and anything else with itself. Every body
/// it receives is sent on the returned channel.
pub(crate) fn device(
    length_width: usize,
    tag_width: usize,
) -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (seen, bodies) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                while let Ok(body) = read_body(&mut stream, length_width) {
                    let _ = seen.send(body.clone());
                    let (tag, payload) = body.split_at(tag_width.min(body.len()));
                    let answer: &[u8] = if payload == b"NC" { b"NC00" } else { payload };
                    if write_frame(&mut stream, length_width, tag, answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, bodies)
}

/// A backend that answers `re:` + payload, out of order: it gathers the frames
/// that arrive together (up to 8) and answers them last first. Counts the
/// connections it accepted and the batches it answered out of order.
pub(crate) struct Reordering {
    pub(crate) addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    reordered: Arc<AtomicUsize>,
}

impl Reordering {
    pub(crate) fn start(length_width: usize, tag_width: usize) -> Reordering {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let reordered = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let batches = reordered.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                counted.fetch_add(1, Ordering::SeqCst);
                let Ok(mut reader) = stream.try_clone() else {
                    return;
                };
                let (tx, rx) = mpsc::channel::<Vec<u8>>();
                std::thread::spawn(move || {
                    while let Ok(body) = read_body(&mut reader, length_width) {
                        if tx.send(body).is_err() {
                            return;
                        }
                    }
                });
                let batches = batches.clone();
                std::thread::spawn(move || {
                    answer_reversed(stream, rx, length_width, tag_width, &batches);
                });
            }
        });
        Reordering {
            addr,
            connections,
            reordered,
        }
    }

    pub(crate) fn reordered(&self) -> usize {
        self.reordered.load(Ordering::SeqCst)
    }

    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn answer_reversed(
    mut stream: TcpStream,
    rx: mpsc::Receiver<Vec<u8>>,
    length_width: usize,
    tag_width: usize,
    reordered: &AtomicUsize,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 8 {
            match rx.recv_timeout(Duration::from_millis(2)) {
                Ok(body) => batch.push(body),
                Err(_) => break,
            }
        }
        if batch.len() > 1 {
            reordered.fetch_add(1, Ordering::SeqCst);
        }
        for body in batch.iter().rev() {
            let (tag, payload) = body.split_at(tag_width.min(body.len()));
            let mut answer = b"re:".to_vec();
            answer.extend_from_slice(payload);
            if write_frame(&mut stream, length_width, tag, &answer).is_err() {
                return;
            }
        }
    }
}
