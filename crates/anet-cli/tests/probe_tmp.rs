#![allow(clippy::disallowed_types)]
use std::{io::{Read, Write}, net::TcpListener, time::{Duration, Instant}};
mod common;
use common::anet;

fn hostile(reply: fn(&mut std::net::TcpStream, &[u8])) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).unwrap_or(0);
                reply(&mut stream, &buf[..n]);
                let mut sink = [0u8; 4096];
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

fn run(name: &str, addr: std::net::SocketAddr, extra: &[&str]) {
    let start = Instant::now();
    let mut args = vec!["send", "--connect"];
    let a = addr.to_string();
    args.push(&a);
    args.extend_from_slice(extra);
    args.push("hello");
    let out = anet().args(&args).output().expect("run");
    println!("{name}: code {:?} in {:?}\n  stdout {:?}\n  stderr {:?}", out.status.code(), start.elapsed(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn probes() {
    run("oversize", hostile(|s, _| { let _ = s.write_all(&[0xff, 0xff, 0, 0, 0, 0]); }), &[]);
    run("len0", hostile(|s, _| { let _ = s.write_all(&[0, 0]); }), &[]);
    run("close", hostile(|s, _| { let _ = s.shutdown(std::net::Shutdown::Both); }), &[]);
    run("wrongtag", hostile(|s, req| { let mut f = req.to_vec(); if f.len() > 5 { f[5] ^= 0xff; } let _ = s.write_all(&f); }), &["--timeout", "1s"]);
    run("flood", hostile(|s, req| { let mut f = req.to_vec(); if f.len() > 5 { f[5] ^= 0xff; } for _ in 0..100000 { if s.write_all(&f).is_err() { break; } } }), &["--timeout", "1s"]);
    run("dup-then-garbage", hostile(|s, req| { let _ = s.write_all(req); let _ = s.write_all(req); let _ = s.write_all(&[0,1,0]); }), &[]);
    run("ascii-nondigit", hostile(|s, req| { let mut f = req.to_vec(); f[2] = b'X'; let _ = s.write_all(&f); }), &["--tag", "ascii:4", "--timeout", "1s"]);
}

