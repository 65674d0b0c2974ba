//! A client to a Sheepdog cluster (or the embedded store): a few pipelined connections to
//! the first reachable gateway, and the typed requests a block client uses.
//!
//! Contract:
//! - `connect` tries the gateways in the order given, each within the connect timeout, and
//!   fails with one line naming every address it tried.
//! - Every typed request checks the server's result: anything but SUCCESS is
//!   `Error::Server { op, code }` (the `Opcode`'s name and sheep's code), so callers can
//!   match on codes such as `SD_RES_NO_VDI` or `SD_RES_READONLY`.
//! - Requests are spread over the connections by least in-flight.

use std::time::Duration;

use super::conn::{Connection, Response};
use super::{Error, Gateway};
use crate::proto::inode::{entry_offset, parse_entries, InodeHeader, OFF_TAG};
use crate::proto::*;
use crate::vdi::SnapSel;

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateways: Vec<Gateway>,
    pub connect_timeout: Duration,
    /// How long one request may wait for its answer (zero: forever).
    pub request_timeout: Duration,
    pub connections: usize,
    /// Requests in flight per connection.
    pub depth: usize,
}

impl Config {
    pub fn new<G: Into<Gateway>>(gateways: impl IntoIterator<Item = G>) -> Config {
        Config {
            gateways: gateways.into_iter().map(Into::into).collect(),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(60),
            connections: 1,
            depth: 64,
        }
    }
}

/// What a VDI lookup answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VdiInfo {
    pub vid: Vid,
    pub copies: u8,
    pub block_size_shift: u8,
}

/// Arguments of NEW_VDI.
#[derive(Debug, Clone)]
pub struct NewVdi {
    pub name: VdiName,
    pub size: u64,
    pub base: u32,
    pub copies: u8,
    pub copy_policy: u8,
    pub block_size_shift: u8,
    /// Non-zero: snapshot (base = working vid) or rebase (base = a snapshot).
    pub snapid: u32,
}

/// A connected client. See the module contract.
pub struct Client {
    conns: Vec<Connection>,
}

impl Client {
    pub async fn connect(cfg: &Config) -> Result<Client, Error> {
        if cfg.gateways.is_empty() {
            return Err(Error::NoGateway("no gateway address given".into()));
        }
        let mut failures = Vec::new();
        for addr in &cfg.gateways {
            match Connection::connect(addr, cfg.connect_timeout, cfg.request_timeout, cfg.depth)
                .await
            {
                Ok(first) => {
                    let mut conns = vec![first];
                    for _ in 1..cfg.connections.max(1) {
                        conns.push(
                            Connection::connect(
                                addr,
                                cfg.connect_timeout,
                                cfg.request_timeout,
                                cfg.depth,
                            )
                            .await?,
                        );
                    }
                    return Ok(Client { conns });
                }
                Err(e) if cfg.gateways.len() == 1 => return Err(e),
                Err(e) => failures.push(e.to_string()),
            }
        }
        Err(Error::NoGateway(failures.join("; ")))
    }

    /// The gateway this client talks to.
    pub fn gateway(&self) -> &Gateway {
        self.conns[0].addr()
    }

    /// `all` reordered with the gateway this client reached first (where a shard should
    /// connect; its connections reconnect through the rest).
    pub fn reachable_first(&self, all: &[Gateway]) -> Vec<Gateway> {
        let mut v = vec![self.gateway().clone()];
        v.extend(all.iter().filter(|g| *g != self.gateway()).cloned());
        v
    }

    /// The most requests this client had in flight at once, over all its connections.
    pub fn peak_inflight(&self) -> usize {
        self.conns.iter().map(Connection::peak_inflight).sum()
    }

    /// Send a request and return the response, whatever its result code.
    pub async fn call(&self, hdr: ReqHeader, payload: &[u8]) -> Result<Response, Error> {
        let conn = self
            .conns
            .iter()
            .min_by_key(|c| c.inflight())
            .expect("a client always has a connection");
        conn.call(hdr, payload).await
    }

    /// Send a request and fail unless the result is SUCCESS.
    pub async fn request(&self, hdr: ReqHeader, payload: &[u8]) -> Result<Response, Error> {
        let op = Opcode::try_from(hdr.opcode).map_err(|e| Error::Invalid(e.to_string()))?;
        let (rsp, data) = self.call(hdr, payload).await?;
        if !rsp.result.is_success() {
            return Err(Error::server(op, rsp.result));
        }
        Ok((rsp, data))
    }

    async fn lookup_op(
        &self,
        op: Opcode,
        name: &VdiName,
        snap: &SnapSel,
        lock_type: u32,
    ) -> Result<VdiInfo, Error> {
        let (payload, snapid) = snap.lookup_payload(name);
        let args = VdiArgs { snapid, lock_type, ..Default::default() };
        let hdr = ReqHeader::vdi(op, SD_FLAG_CMD_WRITE, payload.len() as u32, args);
        let (rsp, _) = self.request(hdr, &payload).await?;
        let vid = Vid::new(rsp.vdi_id()).ok_or_else(|| {
            Error::Invalid(format!("{}: server answered vid {:#x}", op.name(), rsp.vdi_id()))
        })?;
        Ok(VdiInfo { vid, copies: rsp.vdi_copies(), block_size_shift: rsp.vdi_block_size_shift() })
    }

    /// GET_VDI_INFO: the vid of `name` (working VDI, or a snapshot by id or tag).
    pub async fn vdi_info(&self, name: &VdiName, snap: &SnapSel) -> Result<VdiInfo, Error> {
        self.lookup_op(Opcode::GetVdiInfo, name, snap, 0).await
    }

    /// LOCK_VDI: look up and lock (exclusive unless `shared`).
    pub async fn lock_vdi(
        &self,
        name: &VdiName,
        snap: &SnapSel,
        shared: bool,
    ) -> Result<VdiInfo, Error> {
        self.lookup_op(
            Opcode::LockVdi,
            name,
            snap,
            if shared { LOCK_TYPE_SHARED } else { LOCK_TYPE_NORMAL },
        )
        .await
    }

    /// RELEASE_VDI of `vid`. VDI_NOT_LOCKED is not an error (nothing to release).
    pub async fn release_vdi(&self, vid: Vid, shared: bool) -> Result<(), Error> {
        let args = VdiArgs {
            base_vdi_id: vid.0,
            lock_type: if shared { LOCK_TYPE_SHARED } else { LOCK_TYPE_NORMAL },
            ..Default::default()
        };
        match self.request(ReqHeader::vdi(Opcode::ReleaseVdi, 0, 0, args), &[]).await {
            Err(e) if e.code() == Some(SD_RES_VDI_NOT_LOCKED) => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// NEW_VDI: create, clone, snapshot or rebase; returns the new vid.
    pub async fn new_vdi(&self, n: &NewVdi) -> Result<VdiInfo, Error> {
        let args = VdiArgs {
            vdi_size: n.size,
            base_vdi_id: n.base,
            copies: n.copies,
            copy_policy: n.copy_policy,
            store_policy: 0,
            block_size_shift: n.block_size_shift,
            snapid: n.snapid,
            lock_type: 0,
        };
        let payload = n.name.to_field();
        let (rsp, _) = self
            .request(
                ReqHeader::vdi(Opcode::NewVdi, SD_FLAG_CMD_WRITE, payload.len() as u32, args),
                &payload,
            )
            .await?;
        let vid = Vid::new(rsp.vdi_id()).ok_or_else(|| {
            Error::Invalid(format!("new_vdi: server answered vid {:#x}", rsp.vdi_id()))
        })?;
        Ok(VdiInfo { vid, copies: rsp.vdi_copies(), block_size_shift: rsp.vdi_block_size_shift() })
    }

    /// DEL_VDI as sheep defines it (it silently refuses while entries are non-zero; see
    /// `manage::delete` for a delete that works).
    pub async fn del_vdi(&self, name: &VdiName, snap: &SnapSel) -> Result<Vid, Error> {
        let (payload, snapid) = snap.lookup_payload(name);
        let args = VdiArgs { snapid, ..Default::default() };
        let (rsp, _) = self
            .request(
                ReqHeader::vdi(Opcode::DelVdi, SD_FLAG_CMD_WRITE, payload.len() as u32, args),
                &payload,
            )
            .await?;
        Ok(Vid(rsp.vdi_id()))
    }

    /// READ_VDIS: the 2 MiB in-use bitmap.
    pub async fn read_vdis(&self) -> Result<Vec<u8>, Error> {
        let hdr = ReqHeader::vdi(Opcode::ReadVdis, 0, SD_VDI_BITMAP_LEN, VdiArgs::default());
        let (_, data) = self.request(hdr, &[]).await?;
        if data.len() != SD_VDI_BITMAP_LEN as usize {
            return Err(Error::Invalid(format!(
                "read_vdis: got {} bytes, expected {SD_VDI_BITMAP_LEN}",
                data.len()
            )));
        }
        Ok(data)
    }

    /// GET_CLUSTER_DEFAULT: (copies, copy_policy, block_size_shift).
    pub async fn cluster_default(&self) -> Result<(u8, u8, u8), Error> {
        let (rsp, _) = self
            .request(ReqHeader::vdi(Opcode::GetClusterDefault, 0, 0, VdiArgs::default()), &[])
            .await?;
        Ok(rsp.cluster_default())
    }

    /// READ_OBJ of `len` bytes at `offset`.
    pub async fn read_obj(&self, oid: Oid, offset: u32, len: u32) -> Result<Vec<u8>, Error> {
        let hdr =
            ReqHeader::obj(Opcode::ReadObj, 0, len, ObjArgs { oid, offset, ..Default::default() });
        let (_, data) = self.request(hdr, &[]).await?;
        if data.len() != len as usize {
            return Err(Error::Invalid(format!(
                "read_obj {oid}: got {} bytes, asked for {len}",
                data.len()
            )));
        }
        Ok(data)
    }

    /// WRITE_OBJ of `data` at `offset` of an existing object.
    pub async fn write_obj(&self, oid: Oid, offset: u32, data: &[u8]) -> Result<(), Error> {
        let hdr = ReqHeader::obj(
            Opcode::WriteObj,
            SD_FLAG_CMD_WRITE | SD_FLAG_CMD_DIRECT,
            len32(data)?,
            ObjArgs { oid, offset, ..Default::default() },
        );
        self.request(hdr, data).await.map(|_| ())
    }

    /// CREATE_AND_WRITE_OBJ, with COW from `cow` when given. Never call it twice for one
    /// oid while the first is in flight (the VDI layer serialises this).
    pub async fn create_obj(
        &self,
        oid: Oid,
        cow: Option<Oid>,
        offset: u32,
        data: &[u8],
        copies: u8,
        copy_policy: u8,
    ) -> Result<(), Error> {
        let flags = SD_FLAG_CMD_WRITE
            | SD_FLAG_CMD_DIRECT
            | if cow.is_some() { SD_FLAG_CMD_COW } else { 0 };
        let args = ObjArgs {
            oid,
            cow_oid: cow.unwrap_or_default(),
            copies,
            copy_policy,
            offset,
            ..Default::default()
        };
        self.request(ReqHeader::obj(Opcode::CreateAndWriteObj, flags, len32(data)?, args), data)
            .await
            .map(|_| ())
    }

    /// REMOVE_OBJ.
    pub async fn remove_obj(&self, oid: Oid) -> Result<(), Error> {
        self.request(
            ReqHeader::obj(Opcode::RemoveObj, 0, 0, ObjArgs { oid, ..Default::default() }),
            &[],
        )
        .await
        .map(|_| ())
    }

    /// DISCARD_OBJ of object `idx` of `vid` (clears the entry and removes the object).
    pub async fn discard_obj(&self, vid: Vid, idx: u32) -> Result<(), Error> {
        let args = ObjArgs { oid: Oid::data(vid, idx), ..Default::default() };
        self.request(ReqHeader::obj(Opcode::DiscardObj, 0, 0, args), &[]).await.map(|_| ())
    }

    /// Read the inode header of `vid`.
    pub async fn read_inode_header(&self, vid: Vid) -> Result<InodeHeader, Error> {
        let b = self.read_obj(Oid::inode(vid), 0, SD_INODE_HEADER_SIZE).await?;
        InodeHeader::parse(&b).map_err(|e| Error::Invalid(format!("inode {vid}: {e}")))
    }

    /// Read the header and every used `data_vdi_id` entry of `vid`.
    pub async fn read_inode(&self, vid: Vid) -> Result<(InodeHeader, Vec<u32>), Error> {
        let h = self.read_inode_header(vid).await?;
        let n = h.read_len() - SD_INODE_HEADER_SIZE;
        let mut entries = Vec::new();
        if n > 0 {
            let b = self.read_obj(Oid::inode(vid), SD_INODE_HEADER_SIZE, n).await?;
            parse_entries(&b, &mut entries);
        }
        Ok((h, entries))
    }

    /// Persist `data_vdi_id[first..first + entries.len()]` of `vid`.
    pub async fn write_inode_entries(
        &self,
        vid: Vid,
        first: u32,
        entries: &[u32],
    ) -> Result<(), Error> {
        let mut b = Vec::with_capacity(entries.len() * 4);
        crate::proto::inode::encode_entries(entries, &mut b);
        self.write_obj(Oid::inode(vid), entry_offset(first), &b).await
    }

    /// Write the tag field of `vid`'s inode.
    pub async fn write_tag(&self, vid: Vid, tag: Option<&VdiName>) -> Result<(), Error> {
        let field = tag.map(VdiName::to_field).unwrap_or([0; SD_MAX_VDI_TAG_LEN]);
        self.write_obj(Oid::inode(vid), OFF_TAG as u32, &field).await
    }
}

fn len32(data: &[u8]) -> Result<u32, Error> {
    u32::try_from(data.len())
        .map_err(|_| Error::Invalid(format!("payload of {} bytes is too large", data.len())))
}
