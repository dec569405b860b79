//! What a torrent tells one of its peers ([`PeerCmd`]). A leaf module: the
//! torrent actor and the torrent's message types name it without importing
//! the peer actor.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::picker::Block;

/// What a torrent tells one of its peers. Sent with `try_send`: the torrent
/// never waits on a peer (see the crate docs for the policy per command).
#[derive(Debug)]
pub enum PeerCmd {
    /// Withdraw a request (endgame: another peer delivered the block).
    Cancel(Block),
    /// We completed a piece: tell the remote peer.
    Have(u32),
    /// Whether the remote peer has something we lack.
    Interested(bool),
    /// The choker's decision: `true` chokes the remote peer.
    Choke(bool),
    /// The torrent's connected (dialled) peers, for a BEP 11 message when
    /// the interval allows. Dropped when the mailbox is full: the next
    /// refresh brings the list again.
    Pex(Arc<[SocketAddr]>),
}
