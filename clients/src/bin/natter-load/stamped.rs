//! Datagrams with the kernel's arrival time (SO_TIMESTAMPNS). Many participants share this
//! process's threads, so the moment a task gets to a datagram can be milliseconds after it
//! arrived; a real device's receiver is not that late. TWCC feedback built from the task's
//! clock would show the SFU's congestion controller a queue that is only this process
//! falling behind, and it would back off. The kernel's stamp is the arrival a separate
//! device would report.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::cmsg_space;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use nix::sys::time::TimeSpec;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Asks the kernel to stamp each datagram `socket` receives.
pub fn enable(socket: &UdpSocket) -> io::Result<()> {
    setsockopt(socket, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
}

/// The next datagram: its length, sender and arrival (the kernel's stamp, or now without
/// one).
pub async fn recv_from(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Instant)> {
    socket
        .async_io(Interest::READABLE, || recv_once(socket, buf))
        .await
}

fn recv_once(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Instant)> {
    let mut control = cmsg_space!(TimeSpec);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let now = Instant::now();
    let mut arrival = now;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmTimestampns(ts) = c {
            let stamp = UNIX_EPOCH + Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32);
            let age = SystemTime::now()
                .duration_since(stamp)
                .unwrap_or(Duration::ZERO);
            arrival = now.checked_sub(age).unwrap_or(now);
        }
    }
    let from = msg
        .address
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                })
        })
        .ok_or_else(|| io::Error::other("a datagram without a sender address"))?;
    Ok((msg.bytes, from, arrival))
}
