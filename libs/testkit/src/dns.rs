//! A stand-in upstream DNS server on loopback: answers A queries for the names it
//! is given (over UDP and TCP, as RFC 1035 says), "no such name" for any other,
//! and keeps every name it was asked, so that a test can tell which queries left
//! the host's resolver. Threads, stopped when dropped.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use simple_dns::rdata::{A, RData};
use simple_dns::{CLASS, Packet, PacketFlag, QTYPE, RCODE, ResourceRecord, TYPE};

pub struct StandInDns {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl StandInDns {
    /// Serves `records` (lower-case names without the final dot → addresses) on
    /// 127.0.0.1 at a port free for both UDP and TCP.
    pub fn start(records: &[(&str, &[Ipv4Addr])]) -> StandInDns {
        let records: Arc<HashMap<String, Vec<Ipv4Addr>>> = Arc::new(
            records
                .iter()
                .map(|(name, ips)| (name.to_string(), ips.to_vec()))
                .collect(),
        );
        let (udp, tcp) = bind_pair();
        let addr = udp.local_addr().expect("stand-in DNS address");
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        udp.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        tcp.set_nonblocking(true).expect("nonblocking");
        {
            let (records, asked, stop) = (records.clone(), asked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = udp.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some(reply) = answer(&records, &asked, &buf[..len]) {
                        let _ = udp.send_to(&reply, from);
                    }
                }
            });
        }
        {
            let (asked, stop) = (asked.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((stream, _)) => {
                            let (records, asked) = (records.clone(), asked.clone());
                            std::thread::spawn(move || serve_tcp(stream, &records, &asked));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            });
        }
        StandInDns { addr, asked, stop }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every name asked so far, in order (lower case, no final dot).
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for StandInDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..32 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
        let port = udp.local_addr().expect("address").port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)) {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

fn serve_tcp(
    mut stream: TcpStream,
    records: &HashMap<String, Vec<Ipv4Addr>>,
    asked: &Mutex<Vec<String>>,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).is_err() {
            return;
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut query).is_err() {
            return;
        }
        let Some(reply) = answer(records, asked, &query) else {
            return;
        };
        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).is_err() {
            return;
        }
    }
}

fn answer(
    records: &HashMap<String, Vec<Ipv4Addr>>,
    asked: &Mutex<Vec<String>>,
    query: &[u8],
) -> Option<Vec<u8>> {
    let query = Packet::parse(query).ok()?;
    let question = query.questions.first()?.clone();
    let name = question
        .qname
        .to_string()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    asked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(name.clone());
    let mut reply = Packet::new_reply(query.id());
    reply.set_flags(PacketFlag::RECURSION_AVAILABLE | PacketFlag::AUTHORITATIVE_ANSWER);
    if query.has_flags(PacketFlag::RECURSION_DESIRED) {
        reply.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    match records.get(&name) {
        Some(addresses) => {
            if question.qtype == QTYPE::TYPE(TYPE::A) {
                for ip in addresses {
                    reply.answers.push(ResourceRecord::new(
                        question.qname.clone(),
                        CLASS::IN,
                        30,
                        RData::A(A::from(*ip)),
                    ));
                }
            }
        }
        None => *reply.rcode_mut() = RCODE::NameError,
    }
    reply.questions.push(question);
    reply.build_bytes_vec().ok()
}
