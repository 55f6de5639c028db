//! The Modbus driver (TCP today; RTU will be the same driver over another transport).
//!
//! tokio-modbus has no timeouts of its own: every call here is wrapped in one, and after a
//! timeout or a transport error the connection is dropped, so a late reply can never be read as
//! the answer to the next request.

use std::net::SocketAddr;

use tokio::time::timeout;
use tokio_modbus::client::{tcp, Context, Reader};
use tokio_modbus::{ExceptionCode, Slave};

use super::decode::{decode_registers, scale, Raw, Table};
use super::plan::{plan, ReadRequest};
use super::{DeviceError, Driver};
use crate::config::{Device, Transport};
use crate::reading::{now_ms, Quality, Reading, Value};

pub struct ModbusDriver {
    device: Device,
    plan: Vec<ReadRequest>,
    ctx: Option<Context>,
}

/// What one read request returned.
enum Answer {
    Words(Vec<u16>),
    Bits(Vec<bool>),
    Exception(ExceptionCode),
}

impl ModbusDriver {
    pub fn new(device: Device) -> Self {
        let plan = plan(&device.points, device.max_gap);
        ModbusDriver {
            device,
            plan,
            ctx: None,
        }
    }

    pub fn requests_per_cycle(&self) -> usize {
        self.plan.len()
    }

    async fn connect(&mut self) -> Result<&mut Context, DeviceError> {
        if self.ctx.is_none() {
            let Transport::Tcp { host, port } = &self.device.transport;
            let addr_s = format!("{host}:{port}");
            let t = self.device.timeout;
            let addr: SocketAddr = match timeout(t, tokio::net::lookup_host(addr_s.clone())).await {
                Ok(Ok(mut it)) => it.next().ok_or_else(|| DeviceError::Resolve {
                    addr: addr_s.clone(),
                    reason: "no address".into(),
                })?,
                Ok(Err(e)) => {
                    return Err(DeviceError::Resolve {
                        addr: addr_s,
                        reason: e.to_string(),
                    })
                }
                Err(_) => return Err(DeviceError::Timeout(t)),
            };
            let slave = Slave(self.device.unit_id);
            let ctx = match timeout(t, tcp::connect_slave(addr, slave)).await {
                Ok(Ok(ctx)) => ctx,
                Ok(Err(e)) => {
                    return Err(DeviceError::Connect {
                        addr: addr_s,
                        reason: e.to_string(),
                    })
                }
                Err(_) => return Err(DeviceError::Timeout(t)),
            };
            self.ctx = Some(ctx);
        }
        // Just set above when it was None.
        self.ctx
            .as_mut()
            .ok_or(DeviceError::Transport("not connected".into()))
    }

    async fn read(&mut self, req: &ReadRequest) -> Result<Answer, DeviceError> {
        let t = self.device.timeout;
        let ctx = self.connect().await?;
        let (start, count) = (req.start, req.count);
        let result = match req.table {
            Table::Holding => timeout(t, ctx.read_holding_registers(start, count))
                .await
                .map(|r| r.map(|r| r.map(Answer::Words))),
            Table::Input => timeout(t, ctx.read_input_registers(start, count))
                .await
                .map(|r| r.map(|r| r.map(Answer::Words))),
            Table::Coil => timeout(t, ctx.read_coils(start, count))
                .await
                .map(|r| r.map(|r| r.map(Answer::Bits))),
            Table::Discrete => timeout(t, ctx.read_discrete_inputs(start, count))
                .await
                .map(|r| r.map(|r| r.map(Answer::Bits))),
        };
        match result {
            Ok(Ok(Ok(answer))) => Ok(answer),
            Ok(Ok(Err(exception))) => Ok(Answer::Exception(exception)),
            Ok(Err(e)) => {
                self.ctx = None;
                Err(DeviceError::Transport(e.to_string()))
            }
            Err(_) => {
                // Drop the connection: the late reply must not become the next answer.
                self.ctx = None;
                Err(DeviceError::Timeout(t))
            }
        }
    }
}

impl Driver for ModbusDriver {
    fn max_poll_time(&self) -> std::time::Duration {
        // Name lookup and connect each have one timeout, then one per planned request.
        let calls = u32::try_from(self.plan.len())
            .unwrap_or(u32::MAX)
            .saturating_add(2);
        self.device.timeout.saturating_mul(calls)
    }

    async fn poll(&mut self) -> Result<Vec<Reading>, DeviceError> {
        let mut out = Vec::with_capacity(self.device.points.len());
        let plan = self.plan.clone();
        for req in &plan {
            let answer = self.read(req).await?;
            let ts_ms = now_ms();
            for &(idx, off) in &req.points {
                let p = &self.device.points[idx];
                let (value, quality, error) = match &answer {
                    Answer::Exception(code) => {
                        let e = format!("device answered with Modbus exception {code:?}");
                        tracing::debug!(
                            event = "point_exception",
                            device = %self.device.name,
                            unit_id = self.device.unit_id,
                            point = %p.name,
                            error = %e,
                            "point read failed"
                        );
                        (Value::Null, Quality::Bad, Some(e))
                    }
                    Answer::Words(words) => {
                        let w = usize::from(p.data_type.width());
                        let s = usize::from(off);
                        match words
                            .get(s..s + w)
                            .and_then(|regs| decode_registers(regs, p.data_type, p.word_order))
                        {
                            Some(raw) => (scale(raw, p.scale, p.offset), Quality::Good, None),
                            None => short_reply(words.len(), req.count),
                        }
                    }
                    Answer::Bits(bits) => match bits.get(usize::from(off)) {
                        Some(b) => (scale(Raw::Bool(*b), 1.0, 0.0), Quality::Good, None),
                        None => short_reply(bits.len(), req.count),
                    },
                };
                out.push(Reading {
                    device: self.device.name.clone(),
                    point: p.name.clone(),
                    value,
                    unit: p.unit.clone(),
                    ts_ms,
                    quality,
                    error,
                });
            }
        }
        Ok(out)
    }
}

fn short_reply(got: usize, asked: u16) -> (Value, Quality, Option<String>) {
    (
        Value::Null,
        Quality::Bad,
        Some(format!("short reply: {got} of {asked} values")),
    )
}
