//! A stub DNS server on 127.0.0.1 (UDP) whose answers the test sets: A
//! records for any name, from a list the test changes at will. AAAA and
//! other queries get an empty answer. `fail` makes it answer SERVFAIL.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// What the stub answers.
#[derive(Debug, Clone, Default)]
pub struct Answers {
    pub a: Vec<Ipv4Addr>,
    pub fail: bool,
}

pub struct StubDns {
    pub addr: SocketAddr,
    answers: Arc<Mutex<Answers>>,
    /// Every query answered: when, and whether with SERVFAIL.
    answered: Arc<Mutex<Vec<(Instant, bool)>>>,
    task: JoinHandle<()>,
}

impl Drop for StubDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StubDns {
    pub async fn start(a: &[Ipv4Addr]) -> StubDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let addr = socket.local_addr().expect("addr");
        let answers = Arc::new(Mutex::new(Answers {
            a: a.to_vec(),
            fail: false,
        }));
        let shared = Arc::clone(&answers);
        let answered = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&answered);
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let current = shared.lock().expect("lock").clone();
                if let Some(reply) = reply(&buf[..n], &current) {
                    let _ = socket.send_to(&reply, peer).await;
                    log.lock()
                        .expect("lock")
                        .push((Instant::now(), current.fail));
                }
            }
        });
        StubDns {
            addr,
            answers,
            answered,
            task,
        }
    }

    pub fn set(&self, a: &[Ipv4Addr]) {
        let mut answers = self.answers.lock().expect("lock");
        answers.a = a.to_vec();
        answers.fail = false;
    }

    pub fn fail(&self) {
        self.answers.lock().expect("lock").fail = true;
    }

    /// Every query answered so far: when, and whether with SERVFAIL.
    pub fn answered(&self) -> Vec<(Instant, bool)> {
        self.answered.lock().expect("lock").clone()
    }
}

/// The response to one query (RFC 1035 4.1), or None if it is malformed.
fn reply(query: &[u8], answers: &Answers) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut end = 12;
    loop {
        let len = usize::from(*query.get(end)?);
        end += 1 + len;
        if len == 0 {
            break;
        }
    }
    let qtype = u16::from_be_bytes([*query.get(end)?, *query.get(end + 1)?]);
    end += 4;
    let records: &[Ipv4Addr] = if qtype == 1 && !answers.fail {
        &answers.a
    } else {
        &[]
    };
    let mut out = Vec::with_capacity(end + 16 * records.len());
    out.extend_from_slice(&query[..2]); // id
    // QR, opcode 0, AA, RD copied, RA; rcode 0 or 2 (SERVFAIL).
    out.push(0x84 | (query[2] & 0x01));
    out.push(if answers.fail { 0x82 } else { 0x80 });
    out.extend_from_slice(&1u16.to_be_bytes()); // qdcount
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]); // nscount, arcount
    out.extend_from_slice(&query[12..end]);
    for ip in records {
        out.extend_from_slice(&[0xc0, 0x0c]); // the name in the question
        out.extend_from_slice(&1u16.to_be_bytes()); // A
        out.extend_from_slice(&1u16.to_be_bytes()); // IN
        out.extend_from_slice(&1u32.to_be_bytes()); // TTL 1 s
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}
